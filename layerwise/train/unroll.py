"""Unrolling as a library call: the trained stages as one deep autoencoder (encoders bottom-up, then
their decoders top-down), fine-tuned end to end on reconstruction.

    unrolled = unroll([stage.model for stage in stack.stages], {"train": x, "val": x_val, "test": x_test},
                      cfg.unroll, seed=cfg.seed, callback=print)
    unrolled.test_sq_error, unrolled.test_sq_error_stacked  # after / before the fine-tune
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch

from layerwise.config import UnrollConfig
from layerwise.nn.models import Autoencoder, DeepAutoencoder
from layerwise.train.loop import Callback, TrainResult, squared_error, train_unrolled


@dataclass
class Unrolled:
    model: DeepAutoencoder
    result: TrainResult
    test_sq_error_stacked: Optional[float] = None  # squared_error on inputs['test'] before the fine-tune
    test_sq_error: Optional[float] = None          # ... and after it (None without a 'test' split)


def unroll(stages: list[Autoencoder], inputs: dict[str, torch.Tensor], config: UnrollConfig, seed: int = 0,
           callback: Optional[Callback] = None, name: str = "unroll") -> Unrolled:
    """DeepAutoencoder of copies of the trained dense stages (bottom first; the stages themselves
    are left untouched, frozen or not), trained by train_unrolled on inputs['train'] and scored on
    inputs['val'] after every epoch. With a 'test' split, its squared error per image before and
    after the fine-tune (the greedy stack's, then the fine-tuned network's)."""
    if not stages or not all(isinstance(stage, Autoencoder) for stage in stages):
        raise ValueError("unroll needs the trained dense stages (Autoencoder), bottom first: the conv "
                         "decoder needs its encoder's pooling indices, which an unrolled stack does not keep")
    # copies, made trainable: a stack's encoders are frozen (requires_grad False) and shared with
    # its classifier and codes; the copies hold the same values, so the result does not change
    copies = [copy.deepcopy(stage).requires_grad_(True) for stage in stages]
    model = DeepAutoencoder(copies)
    test = inputs.get("test")
    before = squared_error(model, test, precision=config.precision) if test is not None else None
    result = train_unrolled(model, inputs["train"], inputs["val"], config, seed, name, callback)
    after = squared_error(model, test, precision=config.precision) if test is not None else None
    return Unrolled(model, result, before, after)
