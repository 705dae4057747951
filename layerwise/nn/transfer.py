"""Freezing and weight transfer, kept explicit so tests can prove what they do."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from layerwise.nn.models import Classifier, build_encoder

if TYPE_CHECKING:
    from layerwise.config import LayerConfig


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode: later stages read this module but never change it."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


def classifier_from_encoders(encoders: list[nn.Sequential], n_classes: int, dropout: float,
                             seed: int, input_dropout: float = 0.0, batch_norm: bool = False) -> Classifier:
    """Hidden layers start as bit-identical copies of the (frozen) encoders, trainable again;
    the output layer is random (seeded). The encoders themselves are left untouched. With
    batch_norm, call keep_pretrained_function_ before training (its statistics need images)."""
    hidden = [copy.deepcopy(encoder) for encoder in encoders]
    for block in hidden:
        for parameter in block.parameters():
            parameter.requires_grad_(True)
        block.train()
    return Classifier(hidden, n_classes, dropout, input_dropout, torch.Generator().manual_seed(seed), batch_norm)


@torch.no_grad()
def keep_pretrained_function_(model: Classifier, x: torch.Tensor) -> Classifier:
    """Sets each batch norm of a pretrained classifier so the block computes what the pretrained
    encoder computed: scale = the standard deviation and shift = the mean of its weights' output on
    x (each unit; each map of a conv block), so normalising and then scaling back gives that output
    again. Without it the normalisation would wipe out the pretrained biases and scales."""
    h = x
    for block in model.hidden:
        norm = block.norm if "norm" in block._modules else block[1]
        first = block[0]
        z = first(h.reshape(-1, *block.input_shape)) if isinstance(first, nn.Conv2d) else first(h)
        dims = [0, 2, 3] if z.dim() == 4 else [0]
        mean, var = z.mean(dim=dims), z.var(dim=dims, unbiased=False)
        norm.weight.copy_((var + norm.eps).sqrt())
        norm.bias.copy_(mean)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        h = block(h)
    return model


def scratch_classifier(layers: list[LayerConfig], n_classes: int, dropout: float, seed: int,
                       input_dropout: float = 0.0, batch_norm: bool = False) -> Classifier:
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
    return Classifier(hidden, n_classes, dropout, input_dropout, generator, batch_norm)
