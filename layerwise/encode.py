"""Run a frozen encoder over a whole tensor once, in large batches."""
from __future__ import annotations

import torch
from torch import nn


@torch.inference_mode()
def encode(encoder: nn.Module, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    was_training = encoder.training
    encoder.eval()
    out = torch.cat([encoder(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    encoder.train(was_training)
    return out
