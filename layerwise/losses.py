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


def l2_penalty(code: torch.Tensor, weight: float) -> torch.Tensor:
    """weight * mean over the batch of sum_j code_j^2: keeps codes near 0 (so they can be sampled)."""
    return weight * code.pow(2).sum(dim=1).mean()


def activation_slope(code: torch.Tensor, activation: str) -> torch.Tensor:
    """dh/da of the encoder's activation, written with the code h itself."""
    if activation == "sigmoid":
        return code * (1 - code)
    if activation == "tanh":
        return 1 - code.pow(2)
    if activation == "relu":
        return (code > 0).to(code.dtype)
    if activation == "linear":
        return torch.ones_like(code)
    raise ValueError(f"unknown activation {activation!r}")


def contractive_penalty(code: torch.Tensor, weight_matrix: torch.Tensor, activation: str,
                        weight: float) -> torch.Tensor:
    """weight * mean over the batch of ||dh/dx||_F^2. For h = f(Wx + b) the Jacobian is
    diag(f'(a)) W, so its squared Frobenius norm is sum_j f'(a_j)^2 * sum_i W_ji^2 (closed form,
    no per-example Jacobian)."""
    row_norms = weight_matrix.pow(2).sum(dim=1)  # sum_i W_ji^2, one per code unit
    return weight * (activation_slope(code, activation).pow(2) * row_norms).sum(dim=1).mean()


def corrupt(x: torch.Tensor, kind: str, level: float, rescale: bool = False) -> torch.Tensor:
    """Denoising input: 'mask' zeroes each entry with probability level (and with rescale scales the
    rest by 1 / (1 - level), keeping the expected input); 'gaussian' adds N(0, level^2)."""
    if kind == "mask":
        kept = x * (torch.rand_like(x) >= level)
        return kept / (1.0 - level) if rescale else kept
    if kind == "gaussian":
        return x + level * torch.randn_like(x)
    raise ValueError(f"unknown corruption {kind!r}")
