"""What every config model shares: strictness (an unknown key is an error) and the seed range."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Seeds go to torch.manual_seed / torch.Generator.manual_seed, pretraining stages after
# seed * 100 + stage index: keeping seeds within 0..2**31-1 keeps that arithmetic far inside what
# torch (64-bit) and numpy (32-bit) generators accept, so a seed never fails at run time.
SEED_MAX = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
