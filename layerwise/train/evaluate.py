"""Passes over a whole dataset without gradients, in large batches: one helper (in_batches) that
every one goes through, and the passes themselves: codes (encode, encode_splits), predicted
classes (predict, accuracy), reconstruction error (squared_error)."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch import nn

from layerwise.datasets.source import to_unit  # pixels kept as uint8 are scaled per batch
from layerwise.train.loop import device_of, reduced

EVAL_BATCH = 8192  # images per batch of every pass here (machine/memory.py counts with it)
Splits = dict[str, torch.Tensor]  # split name (train, val, test) -> inputs or codes, one row per image


def in_batches(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH, precision: Optional[str] = None,
               forward: Optional[Callable] = None, keep_empty: bool = False) -> Iterator[tuple[torch.Tensor, object]]:
    """Each batch of x (moved to the model's device, scaled to [0, 1]) with forward(batch) (default:
    model), computed in eval mode and under bf16 autocast with precision 'bf16' (as the model
    trains); the model's mode is restored at the end. keep_empty: an empty x still gives one (empty)
    batch, so an empty split gets its [0, width] output. Callers run it under torch.inference_mode."""
    was_training = model.training
    model.eval()
    # computed where the model is; the data may stay in host memory (machine/device.place)
    device = device_of(model)
    try:
        for start in range(0, max(len(x), 1) if keep_empty else len(x), batch_size):
            xb = to_unit(x[start:start + batch_size].to(device, non_blocking=True))
            with reduced(xb, precision):
                out = (forward or model)(xb)
            yield xb, out
    finally:
        model.train(was_training)


@torch.inference_mode()
def encode(encoder: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH, precision: Optional[str] = None
           ) -> torch.Tensor:
    """The codes of x, fp32 (computed under bf16 autocast with precision 'bf16', as the encoder
    trained); they stay where x is (host memory when the data did not fit on the accelerator). An
    empty split (data.val_size: 0) still gets its [0, width] codes."""
    return torch.cat([code.float().to(x.device)
                      for _, code in in_batches(encoder, x, batch_size, precision, keep_empty=True)])


def encode_splits(encoder: nn.Module, inputs: Splits, precision: Optional[str] = None) -> Splits:
    """Every split's codes (fp32; computed in bf16 where the stage trained in bf16)."""
    return {split: encode(encoder, x, precision=precision) for split, x in inputs.items()}


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH, precision: Optional[str] = None
            ) -> torch.Tensor:
    return torch.cat([logits.argmax(dim=1) for _, logits in in_batches(model, x, batch_size, precision)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Optional[str] = None) -> float:
    """The share of x classified as y; precision 'bf16': the forward pass as trained, under autocast."""
    return (predict(model, x, precision=precision).cpu() == y.cpu()).float().mean().item()


@torch.inference_mode()
def squared_error(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH, precision: Optional[str] = None
                  ) -> float:
    """Mean over images of the squared reconstruction error summed over pixels (the measure
    Hinton & Salakhutdinov 2006 report: 3.00 for their deep autoencoder, 13.87 for PCA-30)."""
    total = 0.0
    for xb, out in in_batches(model, x, batch_size, precision, forward=model.reconstruct):
        total += (out.float() - xb).pow(2).sum().item()
    return total / len(x)
