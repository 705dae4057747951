"""One layer's autoencoder, trained on the codes below it: its objective (reconstruction plus the
code penalties in force), its training through the epoch loop, its per-epoch validation, and
train_stage, the seeded stage that the greedy loop and the pipeline's task both call."""
from __future__ import annotations

from typing import Optional

import torch

from layerwise.config import LayerConfig
from layerwise.machine.cpu import should_compile
from layerwise.nn.losses import contractive_penalty, corrupt, l1_penalty, l2_penalty, reconstruction_loss
from layerwise.nn.models import Reconstructor, code_width, seeded_stage
from layerwise.train.evaluate import EVAL_BATCH, Splits, in_batches
from layerwise.train.loop import (Batches, Callback, Phase, Progress, TrainResult, batch_step, device_of, fit,
                                  reduced)
from layerwise.train.optim import make_optimizer

ACTIVE_THRESHOLD = 0.1  # a code unit counts as active on an input when |h| > 0.1


@torch.inference_mode()
def evaluate_autoencoder(model: Reconstructor, x: torch.Tensor, l1: float = 0.0,
                         batch_size: int = EVAL_BATCH, precision: Optional[str] = None) -> dict[str, float]:
    recon = penalty = abs_sum = active = 0.0
    for xb, (code, out) in in_batches(model, x, batch_size, precision):  # in the precision it trains in
        code, out = code.float(), out.float()
        recon += reconstruction_loss(out, xb, model.loss).item() * len(xb)
        penalty += l1_penalty(code, l1).item() * len(xb)
        abs_sum += code.abs().sum().item()
        active += (code.abs() > ACTIVE_THRESHOLD).sum().item()
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
    l1, l2, contractive = layer.l1, layer.l2, layer.contractive
    noise = layer.denoising and (layer.denoising.kind, layer.denoising.level, layer.denoising.rescale)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model.parameters(), layer)
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
        layer.compile, layer.epochs * (len(x_train) // layer.batch_size)), name)

    def validate(epoch: int, total: int) -> dict[str, float]:
        if not len(x_val):  # data.val_size: 0 leaves nothing to validate on
            return {}
        val = evaluate_autoencoder(model, x_val, l1, precision=layer.precision)
        return {"val_recon_loss": val["recon_loss"], "code_l1": val["code_l1"],
                "code_active_frac": val["code_active_frac"]}

    model.train()
    return fit(Batches(step, len(x_train), layer.batch_size, gen), [Phase(layer.epochs, lambda: (opt, None))],
               Progress(name, hint, "recon_loss"), validate, callback)


def stage_seed(seed: int, index: int) -> int:
    """Each stage's own seed (init and batch order), so stage i does not depend on how many
    random numbers the stages below it drew."""
    return seed * 100 + index


def train_stage(layer: LayerConfig, inputs: Splits, seed: int, index: int,
                callback: Optional[Callback] = None, device: Optional[torch.device] = None
                ) -> tuple[Reconstructor, TrainResult]:
    """The layer's autoencoder, seeded, trained on inputs['train'] with its settings, scored on
    inputs['val'] after every epoch. device: where it computes (default: where inputs are; inputs
    left in host memory are copied to it a batch at a time)."""
    # built (and seeded) on the CPU, so every device starts from the same weights
    model = seeded_stage(layer, stage_seed(seed, index)).to(device or inputs["train"].device)
    result = train_autoencoder(model, inputs["train"], inputs["val"], layer, stage_seed(seed, index),
                               f"pretrain-{index}", f"layers.{index - 1}", callback)
    return model, result
