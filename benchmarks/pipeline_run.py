"""One pipeline run inside a timed process (python -m benchmarks.pipeline_run NAME [--set ...] --out F):
wall time split into data, compute per stage, encoding, intermediate files, MLflow logging, the
Prefect API start and the rest (Prefect's task bookkeeping and glue); peak RSS of the process."""
from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import sys
import time

STARTED = time.perf_counter()
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import mlflow  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from prefect.server.api.server import SubprocessASGIServer  # noqa: E402

import flows.pipeline as pipeline_module  # noqa: E402
import layerwise.train.autoencoder  # noqa: E402
import layerwise.train.evaluate  # noqa: E402
import layerwise.train.finetune  # noqa: E402
import layerwise.datasets.mnist  # noqa: E402
import tasks.data  # noqa: E402
import tasks.finetune  # noqa: E402
from benchmarks.timers import Ledger  # noqa: E402
from layerwise.store.cache import Store  # noqa: E402

IMPORTED = time.perf_counter()
MLFLOW = "mlflow_logging"


def instrument() -> Ledger:
    ledger = Ledger(sticky=(MLFLOW,))
    ledger.patch(SubprocessASGIServer, "start", "prefect_api_start")
    # the MD5 check before the flow (check_data imports it from layerwise.datasets.mnist when it runs), then the
    # source read and split inside it
    ledger.patch(layerwise.datasets.mnist, "ensure_mnist", "data_loading")
    ledger.patch(tasks.data, "load_source", "data_loading")
    ledger.patch(tasks.data, "split_source", "data_loading")
    # the core's loops, patched where the tasks reach them: train_stage (layerwise.train.autoencoder),
    # encode_splits (layerwise.train.evaluate) and finetune (layerwise.train.finetune) look these names up in their
    # own modules
    ledger.patch(layerwise.train.autoencoder, "train_autoencoder", lambda a, k: f"compute:{k.get('name') or a[5]}")
    ledger.patch(layerwise.train.evaluate, "encode", "encoding")
    ledger.patch(layerwise.train.finetune, "train_classifier", lambda a, k: "compute:finetune")
    ledger.patch(tasks.finetune, "accuracy", lambda a, k: "compute:finetune")
    ledger.patch(Store, "get", "cache_lookup")
    ledger.patch(Store, "put", "cache_store")
    for name in ("save", "load"):
        ledger.patch(torch, name, "intermediate_files")
    for name, member in vars(MlflowClient).items():
        if not name.startswith("_") and inspect.isfunction(member):  # methods only, not static/class
            ledger.patch(MlflowClient, name, MLFLOW)
    ledger.patch(mlflow.pytorch, "log_model", MLFLOW)
    return ledger


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ledger = instrument()
    t0 = time.perf_counter()
    result = pipeline_module.layerwise_pipeline(args.name, args.overrides, None, os.environ.get("MNIST_ROOT"))
    wall = time.perf_counter() - t0
    seconds = dict(ledger.seconds)
    seconds["prefect_bookkeeping_and_glue"] = wall - sum(seconds.values())
    summary = {**result.outcome.parent_metrics(), "wall_seconds": result.wall_seconds}
    if hasattr(result.outcome, "cells"):
        summary["cells"] = [{k: c[k] for k in ("labels", "seed", "init", "test_error", "train_seconds",
                                                 "run_id", "trained_by")} for c in result.outcome.cells]
    json.dump({"pipeline": args.name, "overrides": args.overrides, "import_seconds": IMPORTED - STARTED,
               "wall_seconds": wall, "seconds": seconds, "calls": dict(ledger.calls),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "result": summary},
              open(args.out, "w"), indent=2)


if __name__ == "__main__":
    sys.exit(main())
