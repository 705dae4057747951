"""Fine-tune the pretrained stack as one deep autoencoder on reconstruction (or reuse the identical
fine-tune of an earlier run)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from prefect import task

from layerwise.cache import Store, content_key, load_file
from layerwise.checkpoint import load_stage
from layerwise.config import PipelineConfig, flatten
from layerwise.encode import encode
from layerwise.models import DeepAutoencoder, build_autoencoder
from layerwise.paths import work_root
from layerwise.training import configure_cpu, squared_error, train_unrolled
from tasks import tracking
from tasks.logs import epoch_reporter, run_logger
from tasks.pretrain import FOREIGN_STORE_TAG, reuse_link

STAGE = "unroll"
MODEL_FILE = "deep-autoencoder.pt"
LINK_TAG = "layerwise.unroll_run_id"


def unroll_store() -> Store:
    return Store(work_root() / "unrolled", warn=run_logger().warning)


def unroll_key(cfg: PipelineConfig, stage_keys: list[str]) -> str:
    """What determines the fine-tuned network: the pretrained stack, the seed and the unroll settings."""
    return content_key({"kind": "unroll", "stack": stage_keys, "seed": cfg.seed, "unroll": cfg.unroll.model_dump()})


@task(name="unroll", task_run_name="unroll")
def unroll_finetune(parent_run_id: str, experiment_id: str, pipeline: str, config: dict, inputs_path: str,
                    weights: list[str], stage_keys: list[str], workdir: str) -> dict:
    """Returns the unrolled model's file (state dict + resolved config), its codes file (train/val/
    test middle codes), its run id, the run that trained it and its test squared errors."""
    configure_cpu()
    cfg = PipelineConfig.model_validate(config)
    unroll = cfg.unroll
    key = unroll_key(cfg, stage_keys)
    store = unroll_store()
    found = store.load(key, lambda entry: load_unrolled(str(entry.file(MODEL_FILE))))
    cached, model = found or (None, None)
    mlf = tracking.client()
    title = f"{STAGE} {'-'.join(map(str, cfg.sizes + cfg.sizes[-2::-1]))}"
    tags = {tracking.PIPELINE_TAG: pipeline, tracking.STAGE_TAG: STAGE, "layerwise.unroll_key": key}
    link_tag, foreign = LINK_TAG, False
    if cached:
        link_tag, extra, foreign = reuse_link(mlf, cached.meta, LINK_TAG)
        tags.update(extra)
    run_id = tracking.start_child_run(mlf, experiment_id, title, tags, parent_run_id,
                                      cached.meta["run_id"] if cached else None, link_tag)
    with tracking.run_status(mlf, run_id):
        tracking.log_params(mlf, run_id, {**flatten(unroll.model_dump(), "unroll"), "sizes": cfg.sizes})
        inputs = torch.load(inputs_path, weights_only=True)
        if cached:
            metrics, trained_by = cached.meta["metrics"], cached.meta["run_id"]
            run_logger().info(f"[{STAGE}] reused: identical fine-tune by MLflow run {trained_by} (key {key})")
            model_path = cached.file(MODEL_FILE)
            if foreign:
                mlf.log_artifact(run_id, str(model_path))
                run_logger().info(f"[{STAGE}] run {trained_by} is not in this tracking store (it was tracked in "
                                  f"{tags[FOREIGN_STORE_TAG]}): its model is logged to this run")
        else:
            model = DeepAutoencoder([load_file(path, load_stage)[0] for path in weights])
            before = squared_error(model, inputs["test"])
            result = train_unrolled(model, inputs["train"], inputs["val"], epochs=unroll.epochs,
                                    batch_size=unroll.batch_size, optimizer=unroll.optimizer, lr=unroll.lr,
                                    momentum=unroll.momentum, weight_decay=unroll.weight_decay,
                                    schedule=unroll.schedule, l2=unroll.l2, seed=cfg.seed, stage=STAGE,
                                    callback=epoch_reporter(mlf, run_id))
            metrics = {"test_sq_error": squared_error(model, inputs["test"]), "test_sq_error_stacked": before,
                       "train_seconds": result.seconds}
            local = Path(workdir) / STAGE / MODEL_FILE
            local.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": model.state_dict(), "config": cfg.model_dump()}, local)
            mlf.log_artifact(run_id, str(local))
            model_path = store.put(key, {MODEL_FILE: local}, {
                "run_id": run_id, "pipeline": pipeline, "tracking_uri": tracking.tracking_uri(),
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": metrics}).file(MODEL_FILE)
            trained_by = run_id
        tracking.log_metrics(mlf, run_id, metrics, step=unroll.epochs)
        run_logger().info(f"[{STAGE}] test squared error per image {metrics['test_sq_error']:.2f} "
                          f"(the greedy stack before fine-tuning: {metrics['test_sq_error_stacked']:.2f})")
        codes = Path(workdir) / STAGE / "codes.pt"
        codes.parent.mkdir(parents=True, exist_ok=True)
        torch.save({split: encode(model.encoders, x) for split, x in inputs.items()}, codes)
    return {"run_id": run_id, "trained_by": trained_by, "model": str(model_path), "codes": str(codes), **metrics}


def load_unrolled(path: str) -> DeepAutoencoder:
    """The fine-tuned deep autoencoder a file of unroll_finetune holds."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = DeepAutoencoder([build_autoencoder(layer) for layer in saved["config"]["layers"]])
    model.load_state_dict(saved["state_dict"])
    return model.eval()
