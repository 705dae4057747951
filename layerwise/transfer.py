"""Freezing and weight transfer, kept explicit so tests can prove what they do."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from layerwise.models import Classifier, build_encoder

if TYPE_CHECKING:
    from layerwise.config import LayerConfig


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode: later stages read this module but never change it."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


def classifier_from_encoders(encoders: list[nn.Sequential], n_classes: int, dropout: float,
                             seed: int, input_dropout: float = 0.0) -> Classifier:
    """Hidden layers start as bit-identical copies of the (frozen) encoders, trainable again;
    the output layer is random (seeded). The encoders themselves are left untouched."""
    hidden = [copy.deepcopy(encoder) for encoder in encoders]
    for block in hidden:
        for parameter in block.parameters():
            parameter.requires_grad_(True)
        block.train()
    return Classifier(hidden, n_classes, dropout, input_dropout, torch.Generator().manual_seed(seed))


def scratch_classifier(layers: list[LayerConfig], n_classes: int, dropout: float, seed: int,
                       input_dropout: float = 0.0) -> Classifier:
    """The control: the same architecture (the resolved layer configs' encoders) from random init
    suited to its activations (Glorot for sigmoid/tanh/linear, He for ReLU), seeded."""
    generator = torch.Generator().manual_seed(seed)
    hidden = [build_encoder(layer) for layer in layers]
    for block, layer in zip(hidden, layers):
        weights, act = block[0], layer.activation
        if act == "relu":
            nn.init.kaiming_normal_(weights.weight, nonlinearity="relu", generator=generator)
        else:
            nn.init.xavier_uniform_(weights.weight, gain=nn.init.calculate_gain(act), generator=generator)
        nn.init.zeros_(weights.bias)
    return Classifier(hidden, n_classes, dropout, input_dropout, generator)
