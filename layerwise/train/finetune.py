"""Fine-tuning as a library call: the stacked encoders (or the same net from random init) plus a
random output layer, trained by backprop on the few labelled images there are.

    tuned = finetune(stack.encoders, Labelled(x, y, x_val, y_val), cfg.finetune, cfg.layers)
    accuracy(tuned.model, x_test, y_test)

The config is taken as it is: a cell's finetune (layerwise.config.cells) has a scratch control's
overrides applied already; a FinetuneConfig of your own with a scratch block wants .in_force().
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from layerwise.config import MNIST_CLASSES, FinetuneConfig, LayerConfig
from layerwise.datasets.source import to_unit
from layerwise.datasets.splits import Labelled
from layerwise.nn.models import Classifier, build_autoencoder
from layerwise.nn.transfer import classifier_from_encoders, keep_pretrained_function_, scratch_classifier
from layerwise.nn.unlabelled import attach_autoencoders, copy_trainable, detach_autoencoders, fresh_decoders
from layerwise.train.classifier import train_classifier
from layerwise.train.loop import Callback, TrainResult

__all__ = ["Finetuned", "Labelled", "build_classifier", "finetune"]  # Labelled lives in layerwise.datasets.splits


@dataclass
class Finetuned:
    model: Classifier
    result: TrainResult


def build_classifier(encoders: Optional[list[nn.Module]], config: FinetuneConfig, layers: list[LayerConfig],
                     n_classes: int = MNIST_CLASSES) -> Classifier:
    """config.init 'pretrained': copies of the encoders; 'scratch': the same architecture (layers)
    from random init. The output layer is random, seeded by config.seed."""
    if config.init == "scratch":
        model = scratch_classifier(layers, n_classes, config.dropout, config.seed, config.input_dropout,
                                   config.batch_norm)
    elif not encoders:
        raise ValueError("init 'pretrained' needs the pretrained encoders (stack.encoders)")
    else:
        model = classifier_from_encoders([getattr(e, "encoder", e) for e in encoders], n_classes, config.dropout,
                                         config.seed, config.input_dropout, config.batch_norm)
    if config.unlabelled is not None and config.unlabelled.objective == "reconstruction":
        attach_autoencoders(model, _autoencoders(encoders, config, layers))
    return model


def _autoencoders(stages: Optional[list[nn.Module]], ft: FinetuneConfig, layers: list[LayerConfig]) -> list:
    """What the reconstruction objective keeps beside the classifier: copies of the pretrained stages
    (encoder and decoder), or for a scratch control fresh decoders drawn from its seed."""
    if ft.init == "scratch":
        return fresh_decoders([build_autoencoder(layer) for layer in layers],
                              torch.Generator().manual_seed(ft.seed + 2))
    if not all(hasattr(stage, "decoder") for stage in stages):
        raise ValueError("finetune.unlabelled reconstruction keeps the pretrained decoders: pass the stack's "
                         "whole stages (stack.stages[i].model, or checkpoint.load_stage), not its encoders")
    return copy_trainable(stages)


CALIBRATION_IMAGES = 2048  # what a pretrained block's batch norm is set up on (keep_pretrained_function_)


def _sample(labelled: Labelled, seed: int, device: torch.device) -> torch.Tensor:
    """Up to CALIBRATION_IMAGES of the images the fine-tune trains on (unlabelled ones where it has
    them), drawn with the cell's seed."""
    pool = labelled.x_unlabelled if labelled.x_unlabelled is not None and len(labelled.x_unlabelled) else labelled.x_train
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:CALIBRATION_IMAGES]
    return to_unit(pool[pick].to(device))


def finetune(encoders: Optional[list[nn.Module]], labelled: Labelled, config: FinetuneConfig,
             layers: list[LayerConfig], n_classes: int = MNIST_CLASSES, name: str = "finetune",
             callback: Optional[Callback] = None, device: Optional[torch.device] = None) -> Finetuned:
    """Builds the classifier (build_classifier) and trains it with config's settings (in force: see
    the module's docstring); name labels progress and errors.
    device: where it trains (default: where the labelled images are). With finetune.unlabelled,
    labelled.x_unlabelled holds the images it uses, and for its reconstruction objective
    `encoders` are the stack's whole stages (their decoders are kept while it trains)."""
    model = build_classifier(encoders, config, layers, n_classes).to(device or labelled.x_train.device)
    if config.batch_norm and config.init == "pretrained":
        keep_pretrained_function_(model, _sample(labelled, config.seed, next(model.parameters()).device))
    result = train_classifier(model, labelled, config, config.seed, name, callback)
    return Finetuned(detach_autoencoders(model), result)
