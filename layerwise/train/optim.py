"""Optimizers and schedules built from a config object (a layer's, a fine-tune's, an unroll's:
optimizer, lr, momentum, weight_decay, schedule), and what runs after each optimizer step."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from layerwise.nn.models import Classifier
from layerwise.train.loop import Schedule

# Devices with PyTorch's fused (one kernel over every parameter) Adam and SGD. On the CPU the
# unfused Adam update took 3.1 ms of a 16.7 ms 784->1000 step, the fused one 0.4 ms (make bench's
# step profile); the rounding differs from the unfused update in the last bits.
FUSED_DEVICES = ("cpu", "cuda")

OPTIMIZERS = {  # config.optimizer -> the torch optimizer, from the config's settings
    "sgd": lambda params, cfg, fused: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                      weight_decay=cfg.weight_decay, fused=fused or None),
    "adam": lambda params, cfg, fused: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                        fused=fused or None),
}


def make_optimizer(params, config, fused: bool = True) -> torch.optim.Optimizer:
    """config.optimizer over params (tensors, or groups with their own lr) with config's lr, momentum
    and weight_decay. fused=False where some parameters start receiving gradients only after the
    first step (the fused SGD of torch 2.14 then fails on their missing momentum buffers)."""
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = fused and bool(tensors) and all(p.device.type in FUSED_DEVICES for p in tensors)
    return OPTIMIZERS[config.optimizer](params, config, fused)


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


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def schedule(opt: torch.optim.Optimizer, config, epochs: int, per_epoch: int) -> Schedule:
    """config.schedule over `epochs` epochs of per_epoch steps: cosine, a scheduler stepped after each
    epoch (returned); linear_decay, a hook after each step (linear_decay_); constant, nothing."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if config.schedule == "linear_decay":
        linear_decay_(opt, epochs * per_epoch, config.decay_start, config.decay_beta1)
    return None


def classifier_optimizer(model: Classifier, config, head_only: bool = False) -> torch.optim.Optimizer:
    """The output layer learns at config.lr; the (pretrained) hidden layers at lr * hidden_lr_scale,
    so fine-tuning can adjust the features without washing them out. head_only: output layer alone.
    With config.max_norm, each step ends with max_norm_."""
    groups = [{"params": list(model.output.parameters()), "lr": config.lr}]
    kept = None
    if not head_only:
        hidden = list(model.hidden.parameters())
        kept = getattr(model, "autoencoders", None)  # finetune.unlabelled reconstruction: decoders learn too
        if kept is not None:
            shared = {id(p) for p in hidden}
            hidden += [p for p in kept.parameters() if id(p) not in shared]
        groups.insert(0, {"params": hidden, "lr": config.lr * config.hidden_lr_scale})
    # the kept decoders get gradients only once the unlabelled objective's ramp starts
    opt = make_optimizer(groups, config, fused=kept is None)
    if config.max_norm:
        opt.register_step_post_hook(lambda *_: max_norm_(model, config.max_norm))
    return opt


@torch.no_grad()
def max_norm_(model: Classifier, limit: float) -> None:
    """Scales every unit's incoming weights (a row of each hidden and output weight; a conv
    layer's filter) back to L2 norm `limit` where they grew past it: Srivastava et al. (2014)'s
    max-norm, which lets dropout nets train at high learning rates without weights blowing up."""
    for module in [*model.hidden.modules(), model.output]:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.copy_(torch.renorm(module.weight, 2, 0, limit))
