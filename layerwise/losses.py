"""Losses, per example summed over features and averaged over the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """bce: output holds logits (numerically stable form); mse: output holds values."""
    if kind == "bce":
        total = F.binary_cross_entropy_with_logits(output, target, reduction="sum")
    elif kind == "mse":
        total = F.mse_loss(output, target, reduction="sum")
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}")
    return total / output.shape[0]


def l1_penalty(code: torch.Tensor, weight: float) -> torch.Tensor:
    """weight * mean over the batch of sum_j |code_j|: pushes most code units to zero."""
    return weight * code.abs().sum(dim=1).mean()


def corrupt(x: torch.Tensor, kind: str, level: float, rescale: bool = False) -> torch.Tensor:
    """Denoising input: 'mask' zeroes each entry with probability level (and with rescale scales the
    rest by 1 / (1 - level), keeping the expected input); 'gaussian' adds N(0, level^2)."""
    if kind == "mask":
        kept = x * (torch.rand_like(x) >= level)
        return kept / (1.0 - level) if rescale else kept
    if kind == "gaussian":
        return x + level * torch.randn_like(x)
    raise ValueError(f"unknown corruption {kind!r}")
