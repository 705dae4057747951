"""One semi-supervised training step against a plain labelled step of the same labelled batch
(issue 28): the time ratio beside the ratio of their floating-point operations. The extra passes
of the virtual-adversarial cost (the unlabelled images in the labelled pass, the power iteration's
probe forward and backward, the perturbed forward and backward) should cost what their arithmetic
costs: time ratio / FLOP ratio near 1.

Both steps run through the fine-tune's own loop (layerwise.train.classifier.train_classifier) on MNIST
images, with the pipeline's settings (unlabelled-ablation's pretrained+virtual_adversarial cell);
FLOPs are counted by torch.utils.flop_counter over the same loop."""
from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from layerwise.config import load_pipeline
from layerwise.datasets.splits import Labelled
from layerwise.machine.cpu import configure_cpu
from layerwise.train.classifier import train_classifier
from layerwise.train.finetune import build_classifier


def _steps(config, labelled: Labelled, layers, steps: int, count_flops: bool = False) -> tuple[float, float]:
    """Seconds per step and FLOPs per step of `steps` steps of config's fine-tune (scratch init:
    the same arithmetic as pretrained)."""
    config = config.model_copy(update={"init": "scratch", "epochs": 1, "min_steps": steps, "head_epochs": 0})
    model = build_classifier(None, config, layers, 10)
    counter = FlopCounterMode(display=False) if count_flops else None
    started = time.perf_counter()
    if counter:
        with counter:
            train_classifier(model, labelled, config, seed=0)
    else:
        train_classifier(model, labelled, config, seed=0)
    seconds = time.perf_counter() - started
    return seconds / steps, (counter.get_total_flops() / steps if counter else float("nan"))


def run(x_train: torch.Tensor, y_train: torch.Tensor, threads: int, pipeline: str = "unlabelled-ablation",
        steps: int = 100, log=print) -> dict:
    configure_cpu(threads)
    cfg = load_pipeline(pipeline)
    cell = next(c for c in cfg.cells() if c.finetune.unlabelled is not None and c.n_labels() == 100)
    semi = cell.finetune.in_force()
    plain = semi.model_copy(update={"unlabelled": None})
    n = semi.batch_size  # one labelled batch a step, as in the 100-label cell
    labelled = Labelled(x_train[:n], y_train[:n], x_train[:0], y_train[:0], x_unlabelled=x_train[n:20000])
    flops = {name: _steps(c, labelled, cell.layers, 3, count_flops=True)[1] for name, c in
             (("plain", plain), ("semi", semi))}
    _steps(semi, labelled, cell.layers, 10)  # warm-up
    seconds = {"plain": [], "semi": []}
    for _ in range(2):  # alternated: drift in the machine's speed hits both alike
        for name, c in (("plain", plain), ("semi", semi)):
            seconds[name].append(_steps(c, labelled, cell.layers, steps)[0])
    best = {name: min(values) for name, values in seconds.items()}
    time_ratio, flop_ratio = best["semi"] / best["plain"], flops["semi"] / flops["plain"]
    row = {"pipeline": pipeline, "labelled_batch": n, "unlabelled_batch": semi.unlabelled.batch_size,
           "plain_ms": 1e3 * best["plain"], "semi_ms": 1e3 * best["semi"],
           "plain_gflop": flops["plain"] / 1e9, "semi_gflop": flops["semi"] / 1e9,
           "time_ratio": time_ratio, "flop_ratio": flop_ratio, "cost_per_flop_ratio": time_ratio / flop_ratio,
           "plain_gflops": flops["plain"] / best["plain"] / 1e9, "semi_gflops": flops["semi"] / best["semi"] / 1e9}
    log(f"  semi-supervised step {row['semi_ms']:.1f} ms ({row['semi_gflop']:.2f} GFLOP) against plain "
        f"{row['plain_ms']:.1f} ms ({row['plain_gflop']:.2f} GFLOP): time x{time_ratio:.2f}, FLOPs x{flop_ratio:.2f}, "
        f"ratio {row['cost_per_flop_ratio']:.2f}")
    return row
