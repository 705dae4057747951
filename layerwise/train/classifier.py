"""The classifier's training on the labelled images: a head-only phase, then every layer, through
the epoch loop; the unlabelled objective's batches beside the labelled ones where the fine-tune
has one; the epoch kept by validation accuracy (or the last)."""
from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F

from layerwise.config import TrainingConfig
from layerwise.datasets.source import to_unit  # pixels kept as uint8 are scaled per batch
from layerwise.datasets.splits import Labelled
from layerwise.nn.models import Classifier
from layerwise.nn.unlabelled import UnlabelledObjective, recorded_statistics
from layerwise.train.evaluate import accuracy
from layerwise.train.loop import Batches, Callback, Phase, Progress, TrainResult, device_of, fit, reduced
from layerwise.train.optim import classifier_optimizer, schedule, steps_per_epoch


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
    """Backprop on the labelled subset with config's settings (a cell's FinetuneConfig: its settings
    in force): first head_epochs with only the output layer learning (the hidden layers fixed),
    then config.epochs_for(the labelled images) through every layer. keep='best_val' restores the
    weights of the epoch with the best validation accuracy; keep='last' keeps the final weights
    (validation is then only reported). Model selection never sees the test set. seed draws the
    batch order and dropout masks; name labels progress and errors."""
    x_train, y_train, x_val, y_val = labelled.x_train, labelled.y_train, labelled.x_val, labelled.y_val
    head_epochs, epochs = config.head_epochs, config.epochs_for(len(y_train))
    # batch order and dropout masks from this cell's own generator (see Classifier)
    gen = torch.Generator().manual_seed(seed)
    model.noise = gen
    total = head_epochs + epochs
    best = {"accuracy": -1.0, "state": None, "epoch": None}
    # selection needs every epoch scored; with keep='last' validation is only reported, and scoring
    # 10,000 images after each of hundreds of short epochs costs as much as the training itself
    # (measured: 28 s of a 50 s 1000-label cell at every epoch), so ten points make the curve
    val_every = 1 if config.keep == "best_val" else max(1, total // 10)
    hint = f"look at finetune.lr ({config.lr}), finetune.optimizer ({config.optimizer}) and " \
           f"finetune.momentum ({config.momentum})"

    device = device_of(model)
    per_epoch = steps_per_epoch(len(x_train), config.batch_size)
    extra = unlabelled_part(config, labelled, total * per_epoch, seed)
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

    def phase(phase_epochs: int, head_only: bool) -> Phase:
        def begin():
            model.hidden.requires_grad_(not head_only)
            where["head_only"] = head_only
            opt = classifier_optimizer(model, config, head_only)
            return opt, None if head_only else schedule(opt, config, phase_epochs, per_epoch)
        return Phase(phase_epochs, begin)

    def validate(epoch: int, total: int) -> dict[str, float]:
        if not len(y_val) or not (epoch % val_every == 0 or epoch == total):
            return {}
        val_acc = accuracy(model, x_val, y_val, config.precision)
        if val_acc > best["accuracy"]:
            best.update(accuracy=val_acc, state=copy.deepcopy(model.state_dict()), epoch=epoch)
        return {"val_accuracy": val_acc}

    model.train()
    result = fit(Batches(step, len(x_train), config.batch_size, gen),
                 [phase(head_epochs, True), phase(epochs, False)], Progress(name, hint, "train_loss"),
                 validate, callback)
    model.hidden.requires_grad_(True)
    model.noise = None
    if config.keep == "best_val":
        if best["state"] is None:
            raise ValueError(f"{name}: keep='best_val' needs validation images (data.val_size is 0): use keep='last'")
        model.load_state_dict(best["state"])
        result.best_epoch = best["epoch"]
    else:
        result.best_epoch = total
    return result
