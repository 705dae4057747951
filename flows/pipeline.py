"""The layer-wise pipeline: pretrain each layer of the stack greedily, then fine-tune the classifier."""
from __future__ import annotations

import shutil
import time
import uuid
from typing import Optional

from prefect import flow, runtime

from layerwise.cache import stage_key
from layerwise.config import load_pipeline
from layerwise.data import ensure_mnist
from layerwise.paths import DEFAULT_CONFIG, data_root, work_root
from tasks import tracking
from tasks.data import prepare_data
from tasks.finetune import finetune
from tasks.pretrain import pretrain_layer
from tasks.runs import open_pipeline_run, record_results


@flow(name="layerwise", flow_run_name="{pipeline}", log_prints=True)
def layerwise_pipeline(pipeline: str, overrides: Optional[list[str]] = None, config_path: Optional[str] = None,
                       mnist_root: Optional[str] = None) -> dict:
    """Runs pipeline NAME from pipelines.yaml (with --set style overrides) and returns its results."""
    started = time.perf_counter()
    cfg = load_pipeline(pipeline, config_path or DEFAULT_CONFIG, overrides or [])
    root = data_root(mnist_root)
    fingerprint = ensure_mnist(root, allow_download=mnist_root is None)
    tracking.check_store()
    config = cfg.model_dump()
    parent = open_pipeline_run(pipeline, config, str(runtime.flow_run.id or ""))
    run_id, experiment_id = parent["run_id"], parent["experiment_id"]
    workdir = work_root() / "runs" / f"{run_id}-{uuid.uuid4().hex[:6]}"
    mlf = tracking.client()
    try:
        with tracking.run_status(mlf, run_id):
            data = prepare_data(str(root), config["data"], str(workdir))
            codes, weights = data["inputs"], []
            if cfg.finetune.init == "pretrained":
                for index, layer in enumerate(config["layers"], start=1):
                    key = stage_key(cfg.pretrain_dict(), index, fingerprint)
                    stage = pretrain_layer(run_id, experiment_id, pipeline, index, layer, cfg.seed, codes,
                                           str(workdir), key)
                    codes = stage["codes"]
                    weights.append(stage["weights"])
            result = finetune(run_id, experiment_id, pipeline, config, data["inputs"], data["labels"], weights)
            result["wall_seconds"] = time.perf_counter() - started
            record_results(run_id, {k: result[k] for k in ("test_accuracy", "test_error", "wall_seconds")})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # codes are per-run scratch; weights are in MLflow
    return {"pipeline": pipeline, "parent_run_id": run_id, "experiment_id": experiment_id, **result}
