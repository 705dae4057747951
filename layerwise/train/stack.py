"""Greedy layer-wise pretraining as a library call: train each layer's autoencoder on the codes of
the one below, freeze it, encode every split once. No tracker, no orchestrator: progress goes to
the callback, and the pipeline's task plugs its stage store and MLflow runs in through `stage=`
(that task trains its stage with train.autoencoder.train_stage, as pretrain_stage does: nothing
below calls back up into this loop).

    stack = pretrain_stack(cfg.layers, {"train": x_train, "val": x_val}, seed=0, callback=print)
    stack.codes["train"]  # the top layer's codes; stack.encoders: the frozen encoders, bottom first
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch
from torch import nn

from layerwise.config import LayerConfig
from layerwise.nn.models import Reconstructor
from layerwise.nn.transfer import freeze
from layerwise.train.autoencoder import train_stage
from layerwise.train.evaluate import Splits, encode_splits
from layerwise.train.loop import Callback, TrainResult


@dataclass
class Stage:
    """One pretrained layer: its frozen encoder and the codes of every split it encoded."""
    index: int  # 1-based, as in the run names pretrain-1, pretrain-2, ...
    encoder: nn.Module
    codes: Splits
    model: Optional[Reconstructor] = None  # the whole autoencoder, when trained here
    result: Optional[TrainResult] = None   # its training history, when trained here


@dataclass
class Stack:
    stages: list[Stage] = field(default_factory=list)

    @property
    def encoders(self) -> list[nn.Module]:
        return [stage.encoder for stage in self.stages]

    @property
    def codes(self) -> Splits:
        """The top layer's codes."""
        return self.stages[-1].codes


def pretrain_stage(layer: LayerConfig, inputs: Splits, seed: int = 0, index: int = 1,
                   callback: Optional[Callback] = None, device: Optional[torch.device] = None) -> Stage:
    """Train one layer, freeze its encoder, encode every split (codes stay where inputs are)."""
    model, result = train_stage(layer, inputs, seed, index, callback, device)
    encoder = freeze(model.encoder)
    return Stage(index, encoder, encode_splits(encoder, inputs, layer.precision), model, result)


class StageFn(Protocol):
    def __call__(self, layer: LayerConfig, inputs: Splits, seed: int, index: int,
                 callback: Optional[Callback]) -> Stage: ...


def pretrain_stack(layers: list[LayerConfig], inputs: Splits, seed: int = 0, callback: Optional[Callback] = None,
                   stage: StageFn = pretrain_stage, keep_codes: bool = True,
                   device: Optional[torch.device] = None) -> Stack:
    """The greedy loop: layer i trains on the codes of layer i-1 (layer 1 on inputs). `layers` are
    resolved layer configs (PipelineConfig.layers); `stage` trains one layer (default: here, in
    memory; the pipeline passes its task, which reuses stored stages and tracks each in MLflow).
    keep_codes=False drops each stage's codes once the stage above has encoded them (the top
    layer's stay): a 1000-wide code of 70,000 images is 280 MB. device: where the stages compute
    (default: where inputs are; see layerwise.machine.device.place for data kept in host memory)."""
    stack, codes = Stack(), inputs
    for index, layer in enumerate(layers, start=1):
        # a stage function of your own is called as StageFn says; device is passed only when given
        trained = (stage(layer, codes, seed, index, callback) if device is None
                   else stage(layer, codes, seed, index, callback, device=device))
        if stack.stages and not keep_codes:
            stack.stages[-1].codes = {}
        stack.stages.append(trained)
        codes = trained.codes
    return stack

