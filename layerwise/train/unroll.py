"""Unrolling as a library call: the trained stages as one deep autoencoder (encoders bottom-up, then
their decoders top-down), fine-tuned end to end on reconstruction.

    unrolled = unroll([stage.model for stage in stack.stages], {"train": x, "val": x_val, "test": x_test},
                      cfg.unroll, seed=cfg.seed, callback=print)
    unrolled.test_sq_error, unrolled.test_sq_error_stacked  # after / before the fine-tune

train_unrolled is its training through the epoch loop.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch

from layerwise.config import UnrollConfig
from layerwise.machine.cpu import should_compile
from layerwise.nn.losses import l2_penalty, reconstruction_loss
from layerwise.nn.models import Autoencoder, DeepAutoencoder
from layerwise.train.evaluate import squared_error
from layerwise.train.loop import Batches, Callback, Phase, Progress, TrainResult, batch_step, device_of, fit, reduced
from layerwise.train.optim import make_optimizer, schedule, steps_per_epoch


def train_unrolled(model: DeepAutoencoder, x_train: torch.Tensor, x_val: torch.Tensor, config: UnrollConfig,
                   seed: int = 0, name: str = "unroll", callback: Optional[Callback] = None) -> TrainResult:
    """Fine-tune the unrolled stack end to end on reconstruction (+ config.l2 on the middle code)
    with config's optimizer settings. Metrics per epoch: recon_loss (training) and val_sq_error
    (squared_error on validation). name labels progress and errors."""
    l2 = config.l2
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model.parameters(), config)
    sched = schedule(opt, config, config.epochs, steps_per_epoch(len(x_train), config.batch_size))
    hint = f"look at unroll.lr ({config.lr}), unroll.optimizer ({config.optimizer}) and unroll.l2 ({l2})"

    device = device_of(model)

    def losses(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with reduced(xb, config.precision):
            code, out = model(xb)
        code, out = code.float(), out.float()
        recon = reconstruction_loss(out, xb, model.loss)
        return (recon + l2_penalty(code, l2) if l2 else recon), recon

    step = batch_step(x_train, device, losses, config.batch_size, should_compile(
        config.compile, config.epochs * (len(x_train) // config.batch_size)), name)

    def validate(epoch: int, total: int) -> dict[str, float]:
        return {"val_sq_error": squared_error(model, x_val, precision=config.precision)} if len(x_val) else {}

    model.train()
    result = fit(Batches(step, len(x_train), config.batch_size, gen), [Phase(config.epochs, lambda: (opt, sched))],
                 Progress(name, hint, "recon_loss"), validate, callback)
    result.best_epoch = config.epochs
    return result


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
