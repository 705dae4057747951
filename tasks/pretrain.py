"""One greedy pretraining stage: train an autoencoder on the previous codes, freeze it, encode once."""
from __future__ import annotations

from pathlib import Path

import torch
from prefect import task

from layerwise.checkpoint import save_stage
from layerwise.config import LayerConfig, flatten
from layerwise.encode import encode
from layerwise.models import Autoencoder
from layerwise.training import configure_cpu, train_autoencoder
from layerwise.transfer import freeze
from tasks import tracking
from tasks.logs import epoch_reporter


def stage_name(index: int) -> str:
    return f"pretrain-{index}"


@task(name="pretrain", task_run_name="pretrain-{index}")
def pretrain_layer(parent_run_id: str, experiment_id: str, pipeline: str, index: int, layer: dict,
                   seed: int, inputs_path: str, workdir: str) -> dict[str, str]:
    """Returns the stage's weights file, its codes file (the next stage's input) and its run id."""
    configure_cpu()
    cfg = LayerConfig.model_validate(layer)
    stage = stage_name(index)
    inputs = torch.load(inputs_path, weights_only=True)
    mlf = tracking.client()
    run_id = tracking.start_run(
        mlf, experiment_id, f"{stage} {cfg.input}→{cfg.size} {cfg.activation} l1={cfg.l1:g}",
        {tracking.PIPELINE_TAG: pipeline, tracking.STAGE_TAG: stage}, parent_run_id)
    with tracking.run_status(mlf, run_id):
        resolved = {"layer": cfg.model_dump(), "index": index, "seed": seed, "pipeline": pipeline}
        tracking.log_params(mlf, run_id, flatten(resolved))

        model = Autoencoder(cfg.input, cfg.size, cfg.activation, cfg.loss)
        train_autoencoder(model, inputs["train"], inputs["val"], epochs=cfg.epochs, batch_size=cfg.batch_size,
                          optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, l1=cfg.l1, seed=seed * 100 + index, stage=stage,
                          noise=(cfg.denoising.kind, cfg.denoising.level) if cfg.denoising else None,
                          callback=epoch_reporter(mlf, run_id))
        out = Path(workdir) / stage
        weights = save_stage(out / f"{stage}.pt", model, resolved)
        mlf.log_artifact(run_id, str(weights))
        encoder = freeze(model.encoder)
        codes = out / "codes.pt"
        torch.save({split: encode(encoder, x) for split, x in inputs.items()}, codes)
    return {"weights": str(weights), "codes": str(codes), "run_id": run_id}
