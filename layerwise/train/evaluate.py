"""Run a frozen encoder over a whole tensor once, in large batches."""
from __future__ import annotations

import torch
from torch import nn

from typing import Optional

from layerwise.datasets.source import to_unit  # pixels kept as uint8 are scaled per batch
from layerwise.train.loop import reduced


@torch.inference_mode()
def encode(encoder: nn.Module, x: torch.Tensor, batch_size: int = 8192, precision: Optional[str] = None
           ) -> torch.Tensor:
    """The codes of x, fp32, computed in batches (under bf16 autocast with precision 'bf16', as
    the encoder trained)."""
    was_training = encoder.training
    encoder.eval()
    # computed where the encoder is; the codes stay where x is (host memory when the data did not
    # fit on the accelerator: see layerwise.machine.device.place). An empty split (data.val_size: 0) still
    # gets its [0, width] codes.
    device = next(encoder.parameters()).device
    out = []
    for i in range(0, max(len(x), 1), batch_size):
        xb = to_unit(x[i:i + batch_size].to(device, non_blocking=True))
        with reduced(xb, precision):
            out.append(encoder(xb).float().to(x.device))
    out = torch.cat(out)
    encoder.train(was_training)
    return out
