"""Freezing and weight transfer, kept explicit so tests can prove what they do."""
from __future__ import annotations

import copy

import torch
from torch import nn

from layerwise.models import Classifier, encoder_block


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
    torch.manual_seed(seed)
    return Classifier(hidden, n_classes, dropout, input_dropout)


def scratch_classifier(sizes: list[int], activations: list[str], n_classes: int, dropout: float,
                       seed: int, input_dropout: float = 0.0) -> Classifier:
    """The control: the same architecture from random init suited to its activations
    (Glorot for sigmoid/tanh, He for ReLU), seeded."""
    torch.manual_seed(seed)
    hidden = [encoder_block(n_in, n_out, act) for n_in, n_out, act in zip(sizes[:-1], sizes[1:], activations)]
    for block, act in zip(hidden, activations):
        linear = block[0]
        if act == "relu":
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        else:
            nn.init.xavier_uniform_(linear.weight, gain=nn.init.calculate_gain(act))
        nn.init.zeros_(linear.bias)
    return Classifier(hidden, n_classes, dropout, input_dropout)
