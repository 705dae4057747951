"""A rough peak-memory estimate of a pipeline, so that sizes which cannot fit are refused before
anything trains (instead of a run failing with exit 1, or being OOM-killed, hours in).

The phases of a run follow one another, so the peak is the largest phase (all float32, 4 bytes):
- pretraining stage i (tasks/pretrain.py): the autoencoder's parameters x4 (weights, gradients and
  Adam's two moments; SGD keeps fewer), the codes of every split held at once (its input, read whole,
  and its output, encoded whole before it is saved: images x (input width + code width)), and one
  batch's activations with their gradients (the training batch, or the 8192-image evaluation and
  encoding batch, whichever is larger);
- fine-tuning (tasks/finetune.py), per cell running at once (ablation.workers): the classifier's
  parameters x4 and the pretrained encoders it was copied from, the pixels of every split (each cell
  loads its own copy) and one batch;
- unrolling (tasks/unroll.py): the whole deep autoencoder's parameters x4, the pixels and middle codes
  of every split, and one batch through all its layers;
plus RUNTIME_BYTES for the interpreter, torch, Prefect and MLflow. Retrieval and PCA hold the pixels
and a 1024-query distance block (~0.3 GB): inside the runtime allowance. It is meant to refuse what
clearly cannot fit, erring high; it is not a plan for tight runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import psutil

from layerwise.config import ConfigError, PipelineConfig, cells as grid_cells, stacks

FLOAT = 4
TRAINING_COPIES = 4            # weights, gradients, Adam's first and second moments
EVAL_BATCH = 8192              # the batch of layerwise.train.evaluate, evaluate_autoencoder and predict
RUNTIME_BYTES = 1_500_000_000  # the imports (python, torch, prefect, mlflow) measured ~0.9 GB resident,
                               # plus the temporary Prefect API and the retrieval/PCA working set


@dataclass
class Phase:
    name: str                # "pretraining stage 1", "fine-tuning (2 cells at once)", "unrolling"
    parts: dict[str, int]    # bytes by what needs them: weights (with optimizer state), codes, activations
    keys: dict[str, str]     # part -> the config key that drives it, e.g. "layers.0.size=3000000"

    @property
    def total(self) -> int:
        return RUNTIME_BYTES + sum(self.parts.values())

    @property
    def key(self) -> str:
        """The key behind the largest part."""
        return self.keys[max(self.parts, key=self.parts.get)]


def _width_key(cfg: PipelineConfig, i: int) -> str:
    layer = cfg.layers[i]
    return f"layers.{i}.channels={layer.channels}" if layer.kind == "conv" else f"layers.{i}.size={layer.size}"


def _encoder_params(layer) -> int:
    """Weight and bias of the encoder (Linear, or the convolution)."""
    if layer.kind == "conv":
        return layer.channels * layer.input_shape[0] * layer.kernel ** 2 + layer.channels
    return layer.input * layer.size + layer.size


def _stage_params(layer) -> int:
    """Encoder plus decoder: the decoder's weight is the encoder's transposed (its own unless tied),
    its bias as wide as the layer's input."""
    input_channels = layer.input_shape[0] if layer.kind == "conv" else layer.input
    weight = _encoder_params(layer) - (layer.channels if layer.kind == "conv" else layer.size)
    return _encoder_params(layer) + input_channels + (0 if layer.tied else weight)


def _hidden(layer) -> int:
    """Values a batch row holds inside the stage besides its input: the code, and for a conv layer the
    maps before pooling and the pooling indices (int64, two floats' worth)."""
    return layer.size * layer.pool ** 2 + 2 * layer.size if layer.kind == "conv" else layer.size


def _batch(batch_size: int, training_copies: int, width: int) -> int:
    """Bytes of one batch's values: a training batch keeps training_copies of each (gradients, dropout
    masks); evaluation and encoding run EVAL_BATCH rows without gradients. The larger of the two."""
    return max(batch_size * training_copies, EVAL_BATCH) * width * FLOAT


def phases(cfg: PipelineConfig) -> list[Phase]:
    """The estimate of each phase of the run (see the module's docstring for what is counted)."""
    facts = cfg.data.found  # the images' shape, classes and counts (check_run binds them)
    images = cfg.data.pool + facts.unlabelled + facts.test
    from layerwise.datasets.splits import keeps_uint8

    values = images * cfg.data.width
    pixels = values * (1 if keeps_uint8(values) else FLOAT)  # uint8 where the float copy would not fit comfortably
    data_key = f"data.train_size={cfg.data.pool}" + (f" (+ {facts.unlabelled} unlabelled)" if facts.unlabelled else "")
    found = []
    for stack in stacks(cfg):
        label = f" (ablation variant {stack.variant})" if stack.variant else ""
        for i, layer in enumerate(stack.layers):
            # the stage's tensors grow with its input and its code width: name the wider's key
            wider = _width_key(stack, i - 1 if i > 0 and stack.layers[i - 1].size > layer.size else i)
            found.append(Phase(f"pretraining stage {i + 1}{label}", {
                "weights": _stage_params(layer) * TRAINING_COPIES * FLOAT,
                "codes": images * (layer.input + layer.size) * FLOAT,
                # input, corrupted input, reconstruction and the hidden values
                "activations": _batch(layer.batch_size, 2, 3 * layer.input + _hidden(layer))},
                {"weights": wider, "codes": wider,
                 "activations": f"layers.{i}.batch_size={layer.batch_size}" if layer.batch_size > EVAL_BATCH
                 else wider}))
    widest = _width_key(cfg, max(range(len(cfg.layers)), key=lambda i: _encoder_params(cfg.layers[i])))
    if cfg.finetune:
        ft = cfg.finetune
        cells = min(cfg.ablation.workers, len(grid_cells(cfg))) if cfg.ablation else 1
        times = f" x ablation.workers={cfg.ablation.workers}" if cells > 1 else ""
        params = sum(_encoder_params(layer) for layer in cfg.layers) + cfg.layers[-1].size * cfg.data.n_classes
        batch = max(ft.batch_size, (ft.scratch and ft.scratch.batch_size) or 0)
        widths = cfg.data.width + sum(_hidden(layer) for layer in cfg.layers)
        found.append(Phase(f"fine-tuning ({cells} cell{'s' * (cells > 1)} at once)", {
            "weights": cells * params * (TRAINING_COPIES + 1) * FLOAT,  # + the loaded encoders it copies
            "codes": cells * 2 * pixels,  # the splits, and the labelled subset copied out of them
            "activations": cells * _batch(batch, 3, widths)},  # with dropout masks and gradients
            {"weights": widest + times, "codes": data_key + times, "activations": widest + times}))
    if cfg.unroll:
        widths = 2 * sum(layer.input + layer.size for layer in cfg.layers)  # before and after each activation
        found.append(Phase("unrolling", {
            "weights": sum(_stage_params(layer) for layer in cfg.layers) * TRAINING_COPIES * FLOAT,
            "codes": pixels + images * cfg.layers[-1].size * FLOAT,
            "activations": _batch(cfg.unroll.batch_size, 2, widths)},
            {"weights": widest, "codes": data_key, "activations": widest}))
    return found


def peak(cfg: PipelineConfig) -> Phase:
    """The phase of the run that needs the most memory."""
    return max(phases(cfg), key=lambda phase: phase.total)


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n < 10 ** 30 else "over 10^21 GB"


def check_fits(cfg: PipelineConfig, available_bytes: Optional[int] = None, *, pipeline: str = "",
               source: str = "") -> Phase:
    """Raise ConfigError if the run's estimated peak exceeds available_bytes (default: this machine's
    physical memory); returns the peak phase otherwise."""
    if available_bytes is None:
        available_bytes = psutil.virtual_memory().total
    top = peak(cfg)
    if top.total <= available_bytes:
        return top
    where = ": ".join(part for part in (source, f"pipeline '{pipeline}'" if pipeline else "") if part)
    names = {"weights": "weights and optimizer state", "codes": "codes", "activations": "activations"}
    parts = " + ".join(f"{names[part]} {_gb(n)}" for part, n in top.parts.items()) + f" + runtime {_gb(RUNTIME_BYTES)}"
    raise ConfigError(f"{where + ': ' if where else ''}{top.key} needs about {_gb(top.total)} in {top.name} "
                      f"({parts}), more than the {_gb(available_bytes)} this machine has")
