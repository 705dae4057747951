"""Training loops over in-memory tensors. They report through a callback, never to a tracker."""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.config import FinetuneConfig, LayerConfig, TrainingConfig, UnrollConfig
from layerwise.machine.cpu import compiled, should_compile
from layerwise.datasets.splits import Labelled
from layerwise.datasets.source import to_unit  # pixels kept as uint8 are scaled per batch
from layerwise.nn.losses import contractive_penalty, corrupt, l1_penalty, l2_penalty, reconstruction_loss
from layerwise.nn.models import Classifier, DeepAutoencoder, Reconstructor, code_width
from layerwise.nn.unlabelled import UnlabelledObjective, recorded_statistics

ACTIVE_THRESHOLD = 0.1  # a code unit counts as active on an input when |h| > 0.1


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


def configure_cpu(threads: Optional[int] = None) -> None:
    """Denormals slow the CPU down badly once sigmoid codes saturate; flush them."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


# Devices with PyTorch's fused (one kernel over every parameter) Adam and SGD. On the CPU the
# unfused Adam update took 3.1 ms of a 16.7 ms 784->1000 step, the fused one 0.4 ms (make bench's
# step profile); the rounding differs from the unfused update in the last bits.
FUSED_DEVICES = ("cpu", "cuda")


def make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float,
                   fused: bool = True) -> torch.optim.Optimizer:
    """fused=False where some parameters start receiving gradients only after the first step (the
    fused SGD of torch 2.14 then fails on their missing momentum buffers)."""
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = fused and bool(tensors) and all(p.device.type in FUSED_DEVICES for p in tensors)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    raise ValueError(f"unknown optimizer {name!r}")


def linear_decay_(opt: torch.optim.Optimizer, total_steps: int, start: float, beta1: Optional[float] = None) -> None:
    """Every group's learning rate held for the first start * total_steps steps, then falling linearly
    to 0 at total_steps, updated after each step (Miyato et al. 2018's schedule; Adam's beta1 set to
    `beta1` while it falls). A post-step hook: the loop that steps the optimizer needs no change."""
    base = [group["lr"] for group in opt.param_groups]
    begin = start * total_steps
    done = {"steps": 0}

    def after_step(*_) -> None:
        done["steps"] = t = done["steps"] + 1
        if t < begin:
            return
        factor = max(0.0, (total_steps - t) / (total_steps - begin))
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * factor
            if beta1 is not None and "betas" in group:
                group["betas"] = (beta1, group["betas"][1])
    opt.register_step_post_hook(after_step)


# Signals reach only the main thread; loops running in worker threads (an ablation's cells) stop at
# their next batch once this is set, so an interrupted process ends within a batch, not a training.
stop_requested = threading.Event()


class Stopped(KeyboardInterrupt):
    """Raised in a training loop when stop_requested is set: an interrupt, like Ctrl-C."""


CHECK_EVERY = 50  # batches between finiteness checks: stop early without a sync on every batch


def _check_finite(value: float, stage: str, epoch: int, hint: str) -> None:
    if not math.isfinite(value):
        raise DivergedError(f"stage {stage}: loss became {value} in epoch {epoch}; {hint}")


def batch_step(x: torch.Tensor, device: torch.device, losses: Callable[[torch.Tensor], tuple],
               batch_size: int, compile_it: bool, name: str) -> Callable[[torch.Tensor], tuple]:
    """step(idx) for run_epoch: the batch x[idx] on the model's device, through losses(xb). With
    compile_it, full batches go through the compiled losses (fixed shapes: one compile); the ragged
    last batch of an epoch runs uncompiled rather than compiling a second graph."""
    fast = compiled(losses, compile_it, name)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb = to_unit(x[idx].to(device, non_blocking=True))
        return (fast if len(idx) == batch_size else losses)(xb)
    return step


def run_epoch(step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], n: int, batch_size: int,
              generator: torch.Generator, opt: torch.optim.Optimizer, stage: str, epoch: int, hint: str) -> float:
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


@torch.inference_mode()
def evaluate_autoencoder(model: Reconstructor, x: torch.Tensor, l1: float = 0.0,
                         batch_size: int = 8192, precision: Optional[str] = None) -> dict[str, float]:
    was_training = model.training
    model.eval()
    recon = penalty = abs_sum = active = 0.0
    device = device_of(model)
    for start in range(0, len(x), batch_size):
        xb = to_unit(x[start:start + batch_size].to(device, non_blocking=True))
        with reduced(xb, precision):  # evaluation in the precision the model trains in
            code, out = model(xb)
        code, out = code.float(), out.float()
        recon += reconstruction_loss(out, xb, model.loss).item() * len(xb)
        penalty += l1_penalty(code, l1).item() * len(xb)
        abs_sum += code.abs().sum().item()
        active += (code.abs() > ACTIVE_THRESHOLD).sum().item()
    model.train(was_training)
    n, units = len(x), code_width(model.encoder)
    return {"recon_loss": recon / n, "l1_loss": penalty / n,
            "code_l1": abs_sum / (n * units), "code_active_frac": active / (n * units)}


def objective(recon: torch.Tensor, model: Reconstructor, code: torch.Tensor, l1: float = 0.0, l2: float = 0.0,
              contractive: float = 0.0) -> torch.Tensor:
    """Reconstruction loss plus the penalties in force (a zero weight adds nothing, not even a 0)."""
    loss = recon
    if l1:
        loss = loss + l1_penalty(code, l1)
    if l2:
        loss = loss + l2_penalty(code, l2)
    if contractive:
        loss = loss + contractive_penalty(code, model.encoder[0].weight, model.activation, contractive)
    return loss


def train_autoencoder(model: Reconstructor, x_train: torch.Tensor, x_val: torch.Tensor, layer: LayerConfig,
                      seed: int = 0, name: str = "pretrain", settings: str = "the layer's",
                      callback: Optional[Callback] = None) -> TrainResult:
    """Minimise reconstruction loss + the code penalties of layer (l1, l2, contractive: objective())
    with its optimizer settings (epochs, batch_size, optimizer, lr, momentum, weight_decay); with
    layer.denoising the encoder sees a corrupted input and the loss compares with the clean one.
    Metrics per epoch: recon_loss (training, averaged over the epoch's batches), val_recon_loss,
    code_l1 and code_active_frac (validation, clean inputs). name labels progress and errors;
    settings names the config the hint of a diverged loss points at (e.g. 'layers.1')."""
    epochs, l1, l2, contractive = layer.epochs, layer.l1, layer.l2, layer.contractive
    noise = layer.denoising and (layer.denoising.kind, layer.denoising.level, layer.denoising.rescale)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model.parameters(), layer.optimizer, layer.lr, layer.momentum, layer.weight_decay)
    result, started = TrainResult(), time.perf_counter()
    hint = (f"look at {settings}.lr ({layer.lr}), {settings}.l1 ({l1}), {settings}.optimizer ({layer.optimizer}) "
            f"and {settings}.loss ({model.loss})")

    device = device_of(model)  # the data may stay in host memory (device.place): batches move here

    def losses(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with reduced(xb, layer.precision):
            code, out = model(corrupt(xb, *noise) if noise else xb)
        code, out = code.float(), out.float()  # the losses in fp32 (a no-op at fp32)
        recon = reconstruction_loss(out, xb, model.loss)
        return objective(recon, model, code, l1, l2, contractive), recon

    step = batch_step(x_train, device, losses, layer.batch_size, should_compile(
        layer.compile, epochs * (len(x_train) // layer.batch_size)), name)

    model.train()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_recon = run_epoch(step, len(x_train), layer.batch_size, gen, opt, name, epoch, hint)
        metrics = {"recon_loss": train_recon}
        if len(x_val):  # data.val_size: 0 leaves nothing to validate on
            val = evaluate_autoencoder(model, x_val, l1, precision=layer.precision)
            metrics.update({"val_recon_loss": val["recon_loss"], "code_l1": val["code_l1"],
                            "code_active_frac": val["code_active_frac"]})
        report = EpochReport(name, epoch, epochs, metrics, time.perf_counter() - t0)
        result.history.append(report)
        if callback:
            callback(report)
    result.seconds = time.perf_counter() - started
    return result


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 8192, precision: Optional[str] = None
            ) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = device_of(model)
    labels = []
    for i in range(0, len(x), batch_size):
        xb = to_unit(x[i:i + batch_size].to(device, non_blocking=True))
        with reduced(xb, precision):
            labels.append(model(xb).argmax(dim=1))
    labels = torch.cat(labels)
    model.train(was_training)
    return labels


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Optional[str] = None) -> float:
    """The share of x classified as y; precision 'bf16': the forward pass as trained, under autocast."""
    return (predict(model, x, precision=precision).cpu() == y.cpu()).float().mean().item()


def classifier_optimizer(model: Classifier, name: str, lr: float, momentum: float, weight_decay: float,
                         hidden_lr_scale: float = 1.0, head_only: bool = False) -> torch.optim.Optimizer:
    """The output layer learns at lr; the (pretrained) hidden layers at lr * hidden_lr_scale, so
    fine-tuning can adjust the features without washing them out. head_only: output layer alone."""
    groups = [{"params": list(model.output.parameters()), "lr": lr}]
    kept = None
    if not head_only:
        hidden = list(model.hidden.parameters())
        kept = getattr(model, "autoencoders", None)  # finetune.unlabelled reconstruction: decoders learn too
        if kept is not None:
            shared = {id(p) for p in hidden}
            hidden += [p for p in kept.parameters() if id(p) not in shared]
        groups.insert(0, {"params": hidden, "lr": lr * hidden_lr_scale})
    # the kept decoders get gradients only once the unlabelled objective's ramp starts
    return make_optimizer(groups, name, lr, momentum, weight_decay, fused=kept is None)


@torch.no_grad()
def max_norm_(model: Classifier, limit: float) -> None:
    """Scales every unit's incoming weights (a row of each hidden and output weight; a conv
    layer's filter) back to L2 norm `limit` where they grew past it: Srivastava et al. (2014)'s
    max-norm, which lets dropout nets train at high learning rates without weights blowing up."""
    for module in [*model.hidden.modules(), model.output]:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.copy_(torch.renorm(module.weight, 2, 0, limit))


def unlabelled_part(config: TrainingConfig, labelled: Labelled, total_steps: int, seed: int):
    """config.unlabelled's objective over labelled.x_unlabelled (None without one), with its own
    generator, so the labelled batches, their order and their dropout masks stay as without it."""
    settings = getattr(config, "unlabelled", None)
    if settings is None:
        return None
    if labelled.x_unlabelled is None:
        raise ValueError("finetune.unlabelled needs the unlabelled images: Labelled(..., x_unlabelled=...)")
    return UnlabelledObjective(settings, labelled.x_unlabelled, total_steps, torch.Generator().manual_seed(seed + 1))


def train_classifier(model: Classifier, labelled: Labelled, config: TrainingConfig, seed: int = 0,
                     name: str = "finetune", callback: Optional[Callback] = None) -> TrainResult:
    """Backprop on the labelled subset with config's settings (a FinetuneConfig: the ones in force
    for its init): first head_epochs with only the output layer learning (the hidden layers fixed),
    then config.epochs_for(the labelled images) through every layer. keep='best_val' restores the
    weights of the epoch with the best validation accuracy; keep='last' keeps the final weights
    (validation is then only reported). Model selection never sees the test set. seed draws the
    batch order and dropout masks; name labels progress and errors."""
    if isinstance(config, FinetuneConfig):
        config = config.in_force()
    x_train, y_train, x_val, y_val = labelled.x_train, labelled.y_train, labelled.x_val, labelled.y_val
    keep, head_epochs, epochs = config.keep, config.head_epochs, config.epochs_for(len(y_train))
    optimizer, lr, momentum = config.optimizer, config.lr, config.momentum
    if keep not in ("best_val", "last"):
        raise ValueError(f"keep must be 'best_val' or 'last', got {keep!r}")
    # batch order and dropout masks from this cell's own generator (see Classifier)
    gen = torch.Generator().manual_seed(seed)
    model.noise = gen
    total = head_epochs + epochs
    result, started = TrainResult(), time.perf_counter()
    best_acc, best_state = -1.0, None
    # selection needs every epoch scored; with keep='last' validation is only reported, and scoring
    # 10,000 images after each of hundreds of short epochs costs as much as the training itself
    # (measured: 28 s of a 50 s 1000-label cell at every epoch), so ten points make the curve
    val_every = 1 if keep == "best_val" else max(1, total // 10)
    hint = f"look at finetune.lr ({lr}), finetune.optimizer ({optimizer}) and finetune.momentum ({momentum})"

    device = device_of(model)
    extra = unlabelled_part(config, labelled, total * -(-len(x_train) // config.batch_size), seed)
    where = {"step": 0, "head_only": False}

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb = to_unit(x_train[idx].to(device, non_blocking=True))
        drawn = extra and extra.draw(where["step"], device, where["head_only"])
        joint = drawn is not None and extra.joint_with(model)
        with reduced(xb, config.precision), (recorded_statistics(model) if joint else nullcontext({})) as stats:
            logits = model(torch.cat([xb, drawn[0]]) if joint else xb)  # joint: labelled and unlabelled at once
        loss = F.cross_entropy(logits[:len(idx)].float(), y_train[idx].to(device, non_blocking=True))
        if extra is None:
            return loss, loss
        added = drawn and drawn[1] * (extra.value(model, drawn[0], logits[len(idx):], stats) if joint
                                      else extra.value(model, drawn[0]))
        where["step"] += 1
        # train_loss reports the labelled part, comparable with a fine-tune without unlabelled data
        return (loss if added is None else loss + added), loss
    model.train()
    epoch = 0
    for phase_epochs, head_only in ((head_epochs, True), (epochs, False)):
        if not phase_epochs:
            continue
        model.hidden.requires_grad_(not head_only)
        where["head_only"] = head_only
        opt = classifier_optimizer(model, optimizer, lr, momentum, config.weight_decay, config.hidden_lr_scale,
                                   head_only)
        if config.max_norm:
            opt.register_step_post_hook(lambda *_: max_norm_(model, config.max_norm))
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=phase_epochs)
                 if config.schedule == "cosine" and not head_only else None)
        if config.schedule == "linear_decay" and not head_only:
            linear_decay_(opt, phase_epochs * -(-len(x_train) // config.batch_size), config.decay_start,
                          config.decay_beta1)
        for _ in range(phase_epochs):
            epoch += 1
            t0 = time.perf_counter()
            train_loss = run_epoch(step, len(x_train), config.batch_size, gen, opt, name, epoch, hint)
            if sched:
                sched.step()
            metrics = {"train_loss": train_loss}
            if len(y_val) and (epoch % val_every == 0 or epoch == total):
                metrics["val_accuracy"] = val_acc = accuracy(model, x_val, y_val, config.precision)
                if val_acc > best_acc:
                    best_acc, best_state, result.best_epoch = val_acc, copy.deepcopy(model.state_dict()), epoch
            report = EpochReport(name, epoch, total, metrics, time.perf_counter() - t0)
            result.history.append(report)
            if callback:
                callback(report)
    model.hidden.requires_grad_(True)
    model.noise = None
    if keep == "best_val":
        if best_state is None:
            raise ValueError(f"{name}: keep='best_val' needs validation images (data.val_size is 0): use keep='last'")
        model.load_state_dict(best_state)
    else:
        result.best_epoch = total
    result.seconds = time.perf_counter() - started
    return result


@torch.inference_mode()
def squared_error(model: nn.Module, x: torch.Tensor, batch_size: int = 8192, precision: Optional[str] = None
                  ) -> float:
    """Mean over images of the squared reconstruction error summed over pixels (the measure
    Hinton & Salakhutdinov 2006 report: 3.00 for their deep autoencoder, 13.87 for PCA-30)."""
    was_training = model.training
    model.eval()
    device = device_of(model)
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = to_unit(x[i:i + batch_size].to(device, non_blocking=True))
        with reduced(xb, precision):
            out = model.reconstruct(xb)
        total += (out.float() - xb).pow(2).sum().item()
    model.train(was_training)
    return total / len(x)


def train_unrolled(model: DeepAutoencoder, x_train: torch.Tensor, x_val: torch.Tensor, config: UnrollConfig,
                   seed: int = 0, name: str = "unroll", callback: Optional[Callback] = None) -> TrainResult:
    """Fine-tune the unrolled stack end to end on reconstruction (+ config.l2 on the middle code)
    with config's optimizer settings. Metrics per epoch: recon_loss (training) and val_sq_error
    (squared_error on validation). name labels progress and errors."""
    epochs, l2 = config.epochs, config.l2
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum, config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if config.schedule == "cosine" else None
    if config.schedule == "linear_decay":
        linear_decay_(opt, epochs * -(-len(x_train) // config.batch_size), config.decay_start, config.decay_beta1)
    result, started = TrainResult(), time.perf_counter()
    hint = f"look at unroll.lr ({config.lr}), unroll.optimizer ({config.optimizer}) and unroll.l2 ({l2})"

    device = device_of(model)

    def losses(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with reduced(xb, config.precision):
            code, out = model(xb)
        code, out = code.float(), out.float()
        recon = reconstruction_loss(out, xb, model.loss)
        return (recon + l2_penalty(code, l2) if l2 else recon), recon

    step = batch_step(x_train, device, losses, config.batch_size, should_compile(
        config.compile, epochs * (len(x_train) // config.batch_size)), name)

    model.train()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_recon = run_epoch(step, len(x_train), config.batch_size, gen, opt, name, epoch, hint)
        if sched:
            sched.step()
        metrics = {"recon_loss": train_recon}
        if len(x_val):
            metrics["val_sq_error"] = squared_error(model, x_val, precision=config.precision)
        report = EpochReport(name, epoch, epochs, metrics, time.perf_counter() - t0)
        result.history.append(report)
        if callback:
            callback(report)
    result.best_epoch = epochs
    result.seconds = time.perf_counter() - started
    return result
