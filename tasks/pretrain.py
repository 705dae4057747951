"""One greedy pretraining stage: train an autoencoder on the previous codes (or reuse the identical
stage trained before), freeze it, encode every split once."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task

from layerwise.cache import Store
from layerwise.checkpoint import load_encoder, save_stage
from layerwise.config import LayerConfig, flatten
from layerwise.encode import encode
from layerwise.models import seeded_stage
from layerwise.paths import work_root
from layerwise.training import configure_cpu, train_autoencoder
from layerwise.transfer import freeze
from tasks import tracking
from tasks.logs import epoch_reporter, run_logger

LINK_TAG = "layerwise.pretrain_run_id"
FOREIGN_RUN_TAG = "layerwise.reused_from_run"
FOREIGN_STORE_TAG = "layerwise.reused_from_store"


def stage_name(index: int) -> str:
    return f"pretrain-{index}"


def _regularisers(cfg: LayerConfig) -> str:
    """The stage's objective in a few words, for run titles (l1=0.1 mask0.5 ...)."""
    words = [f"{key}={getattr(cfg, key):g}" for key in ("l1", "l2", "contractive") if getattr(cfg, key)]
    if cfg.denoising:
        words.append(f"{cfg.denoising.kind}{cfg.denoising.level:g}")
    if cfg.tied:
        words.append("tied")
    return " ".join(words) or "plain"


def stage_store() -> Store:
    return Store(work_root() / "stages", warn=run_logger().warning)


def reuse_link(mlf: MlflowClient, meta: dict, link_tag: str) -> tuple[str, dict[str, str], bool]:
    """How a reusing run points at the run that did the work: (the tag naming that run, extra
    tags, whether the reusing run must hold the stored files itself).

    When that run is in this tracking store: link_tag = its id, and the weights stay with it (no
    copy). When it is not (trained under another MLFLOW_TRACKING_URI, or this store was emptied),
    a link tag would point at nothing, so the link tag is left off and the caller logs the stored
    files as the reusing run's own artifacts: as for any run without a link tag, the weights are
    in the run itself. Where they came from is kept as reused_from_run (the run id) and
    reused_from_store (the store it was tracked in). The run id is what decides, not the URI: one
    store reached under two spellings still resolves it, and the link works there."""
    try:
        here = mlf.get_run(meta["run_id"]).info.lifecycle_stage != "deleted"
    except MlflowException:
        here = False
    if here:
        return link_tag, {}, False
    return FOREIGN_RUN_TAG, {FOREIGN_STORE_TAG: str(meta.get("tracking_uri", "unknown"))}, True


@task(name="pretrain", task_run_name="pretrain-{index}")
def pretrain_layer(parent_run_id: str, experiment_id: str, pipeline: str, index: int, layer: dict,
                   seed: int, inputs_path: str, workdir: str, cache_key: str) -> dict[str, str]:
    """Returns the stage's weights file, its codes file (the next stage's input), its run id and
    the id of the run that trained the weights (itself, or the earlier run whose stage it reused,
    which may be in another tracking store: see reuse_link)."""
    configure_cpu()
    cfg = LayerConfig.model_validate(layer)
    stage = stage_name(index)
    resolved = {"layer": cfg.model_dump(), "index": index, "seed": seed, "pipeline": pipeline}
    store = stage_store()
    found = store.load(cache_key, lambda entry: freeze(load_encoder(entry.file(f"{stage}.pt"))[0]))
    cached, encoder = found or (None, None)
    mlf = tracking.client()
    shape = f"{cfg.channels}c{cfg.kernel}p{cfg.pool}" if cfg.kind == "conv" else str(cfg.size)
    title = f"{stage} {cfg.input}→{shape} {cfg.activation} {_regularisers(cfg)}"
    tags = {tracking.PIPELINE_TAG: pipeline, tracking.STAGE_TAG: stage, "layerwise.stage_key": cache_key}
    link_tag, foreign = LINK_TAG, False
    if cached:
        link_tag, extra, foreign = reuse_link(mlf, cached.meta, LINK_TAG)
        tags.update(extra)
    run_id = tracking.start_child_run(mlf, experiment_id, title, tags, parent_run_id,
                                      cached.meta["run_id"] if cached else None, link_tag)
    with tracking.run_status(mlf, run_id):
        inputs = torch.load(inputs_path, weights_only=True)
        tracking.log_params(mlf, run_id, flatten(resolved))
        if cached:
            weights = cached.file(f"{stage}.pt")
            trained_by = cached.meta["run_id"]
            run_logger().info(f"[{stage}] reused: identical stage trained by MLflow run {trained_by} "
                              f"(key {cache_key}); no autoencoder trained")
            if foreign:
                mlf.log_artifact(run_id, str(weights))
                run_logger().info(f"[{stage}] run {trained_by} is not in this tracking store (it was tracked in "
                                  f"{tags[FOREIGN_STORE_TAG]}): its weights are logged to this run")
            tracking.log_metrics(mlf, run_id, cached.meta["final_metrics"], step=cfg.epochs)
        else:
            model = seeded_stage(cfg.model_dump(), seed * 100 + index)
            result = train_autoencoder(
                model, inputs["train"], inputs["val"], epochs=cfg.epochs, batch_size=cfg.batch_size,
                optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                l1=cfg.l1, l2=cfg.l2, contractive=cfg.contractive, noise=cfg.denoising and (cfg.denoising.kind, cfg.denoising.level, cfg.denoising.rescale),
                seed=seed * 100 + index, stage=stage, settings=f"layers.{index - 1}",
                callback=epoch_reporter(mlf, run_id))
            local = save_stage(Path(workdir) / stage / f"{stage}.pt", model, resolved)
            mlf.log_artifact(run_id, str(local))
            weights = store.put(cache_key, {local.name: local}, {
                "run_id": run_id, "pipeline": pipeline, "stage": stage, "tracking_uri": tracking.tracking_uri(),
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": result.seconds,
                "final_metrics": result.history[-1].metrics}).file(local.name)
            encoder = freeze(model.encoder)
            trained_by = run_id
        codes = Path(workdir) / stage / "codes.pt"
        codes.parent.mkdir(parents=True, exist_ok=True)
        torch.save({split: encode(encoder, x) for split, x in inputs.items()}, codes)
    return {"weights": str(weights), "codes": str(codes), "run_id": run_id, "trained_by": trained_by}
