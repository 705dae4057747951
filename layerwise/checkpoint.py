"""Stage weight files: the state dicts together with the resolved config that produced them."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from layerwise.models import Autoencoder, encoder_block


def save_stage(path: Path, model: Autoencoder, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"encoder": model.encoder.state_dict(), "decoder": model.decoder.state_dict(),
                "config": config}, path)
    return path


def load_encoder(path: Path | str) -> tuple[nn.Sequential, dict]:
    """The encoder block of a saved stage (Linear + activation) and its config."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    layer = saved["config"]["layer"]
    encoder = encoder_block(layer["input"], layer["size"], layer["activation"])
    encoder.load_state_dict(saved["encoder"])
    return encoder, saved["config"]
