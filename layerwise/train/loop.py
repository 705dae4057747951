"""The one epoch loop every training here runs through: shuffled minibatches through a step, the
optimizer per phase with its schedule, evaluation after each epoch, a progress report to a
callback (never to a tracker), divergence and interrupts caught between batches."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from layerwise.datasets.source import to_unit  # pixels kept as uint8 are scaled per batch
from layerwise.machine.cpu import compiled


@dataclass
class EpochReport:
    stage: str
    epoch: int  # 1-based
    epochs: int
    metrics: dict[str, float]
    seconds: float

    def line(self) -> str:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in self.metrics.items())
        return f"[{self.stage}] epoch {self.epoch}/{self.epochs}  {shown}  ({self.seconds:.1f} s)"

    __str__ = line  # callback=print shows the progress line


Callback = Callable[[EpochReport], None]


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the stage, epoch and what to look at."""


@dataclass
class TrainResult:
    history: list[EpochReport] = field(default_factory=list)
    best_epoch: Optional[int] = None
    seconds: float = 0.0


def reduced(x: torch.Tensor, precision: Optional[str]):
    """The forward pass in bf16 where the settings say `precision: bf16` (autocast on x's device:
    matmuls and convolutions in bf16, weights and optimizer state kept fp32); a no-op at fp32."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


# Signals reach only the main thread; loops running in worker threads (an ablation's cells) stop at
# their next batch once this is set, so an interrupted process ends within a batch, not a training.
stop_requested = threading.Event()


class Stopped(KeyboardInterrupt):
    """Raised in a training loop when stop_requested is set: an interrupt, like Ctrl-C."""


CHECK_EVERY = 50  # batches between finiteness checks: stop early without a sync on every batch


def _check_finite(value: float, stage: str, epoch: int, hint: str) -> None:
    if not math.isfinite(value):
        raise DivergedError(f"stage {stage}: loss became {value} in epoch {epoch}; {hint}")


Step = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # batch indices -> (loss, value reported)


def batch_step(x: torch.Tensor, device: torch.device, losses: Callable[[torch.Tensor], tuple],
               batch_size: int, compile_it: bool, name: str) -> Step:
    """step(idx) for the loop: the batch x[idx] on the model's device, through losses(xb). With
    compile_it, full batches go through the compiled losses (fixed shapes: one compile); the ragged
    last batch of an epoch runs uncompiled rather than compiling a second graph."""
    fast = compiled(losses, compile_it, name)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb = to_unit(x[idx].to(device, non_blocking=True))
        return (fast if len(idx) == batch_size else losses)(xb)
    return step


def run_epoch(step: Step, n: int, batch_size: int, generator: torch.Generator, opt: torch.optim.Optimizer,
              stage: str, epoch: int, hint: str) -> float:
    """One pass over shuffled minibatches. step(idx) gives the loss to minimise and the value to
    report; returns the value's per-example mean. Finiteness is checked every CHECK_EVERY batches
    and at the end: a diverged stage stops early without an .item() sync on every batch."""
    total = None  # on the device the loss is on: no host sync per batch
    for count, idx in enumerate(minibatches(n, batch_size, generator), start=1):
        if stop_requested.is_set():
            raise Stopped(f"stage {stage}: stopped in epoch {epoch}")
        loss, value = step(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total = value.detach() * len(idx) if total is None else total + value.detach() * len(idx)
        if count % CHECK_EVERY == 0:
            _check_finite(total.item(), stage, epoch, hint)
    mean = total.item() / n
    _check_finite(mean, stage, epoch, hint)
    return mean


@dataclass
class Batches:
    """What an epoch walks: step(idx) over n examples, in minibatches of batch_size shuffled by generator."""
    step: Step
    n: int
    batch_size: int
    generator: torch.Generator


Schedule = Optional[torch.optim.lr_scheduler.LRScheduler]  # stepped after each epoch


@dataclass
class Phase:
    """Epochs trained with one optimizer; begin() makes it and its schedule when the phase starts
    (a classifier's head-only epochs, then every layer's)."""
    epochs: int
    begin: Callable[[], tuple[torch.optim.Optimizer, Schedule]]


@dataclass
class Progress:
    """How a training reports: its name in progress lines and errors, what to look at when its loss
    diverges, and the name of the value its steps report (recon_loss, train_loss)."""
    name: str
    hint: str
    reports: str


def fit(batches: Batches, phases: list[Phase], progress: Progress,
        evaluate: Optional[Callable[[int, int], dict[str, float]]] = None,
        callback: Optional[Callback] = None) -> TrainResult:
    """The epochs of every phase in turn: run_epoch, the phase's schedule stepped, evaluate(epoch,
    total epochs) adding its metrics to the step's mean, an EpochReport to callback. The caller has
    put the model in training mode; best_epoch is the caller's to set."""
    total = sum(phase.epochs for phase in phases)
    result, started, epoch = TrainResult(), time.perf_counter(), 0
    for phase in phases:
        if not phase.epochs:
            continue
        opt, schedule = phase.begin()
        for _ in range(phase.epochs):
            epoch += 1
            t0 = time.perf_counter()
            value = run_epoch(batches.step, batches.n, batches.batch_size, batches.generator, opt, progress.name,
                              epoch, progress.hint)
            if schedule:
                schedule.step()
            metrics = {progress.reports: value}
            if evaluate:
                metrics.update(evaluate(epoch, total))
            report = EpochReport(progress.name, epoch, total, metrics, time.perf_counter() - t0)
            result.history.append(report)
            if callback:
                callback(report)
    result.seconds = time.perf_counter() - started
    return result
