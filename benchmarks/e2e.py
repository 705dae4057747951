"""End to end: the whole `layerwise run quickstart` command against benchmarks/bare_quickstart.py (the
same work in plain PyTorch), both as whole processes, alternated (bare, layerwise, bare, ...) in one run.

    python -m benchmarks.run --only e2e [--pairs 2] [--quick]   # this section alone

The layerwise process gets a fresh sqlite MLflow store (MLFLOW_TRACKING_URI) and a fresh
LAYERWISE_WORKDIR in a temporary folder, so no stage or cell is reused; it uses the user's Prefect
profile (PREFECT_HOME) as `make run` does, so its temporary API starts over an existing database.
Process wall time is measured from outside (fork to exit) and CPU time (user + sys, the process and
the children it waited for: the temporary Prefect API) with wait4; the 1-minute load average is
noted before and after each run, since the ratio is only as good as the machine's quiet."""
from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from benchmarks import bare_quickstart as bare
from layerwise.paths import PROJECT_ROOT, data_root

PIPELINE = "quickstart"
TARGET = 1.10  # layerwise / bare, whole processes
QUICK = {"train_size": 20000, "finetune_epochs": 2}  # --quick: the sizes run.py's other quick runs use


def check_bare_settings() -> None:
    """The bare script hard-codes quickstart's settings (so it imports only torch and torchvision);
    refuse to compare if pipelines.yaml has moved away from them."""
    from layerwise.config import load_pipeline

    cfg = load_pipeline(PIPELINE)
    problems = []
    if cfg.seed != bare.SEED:
        problems.append(f"seed {cfg.seed} != {bare.SEED}")
    data = {key: getattr(cfg.data, key) for key in bare.DATA}
    if cfg.data.source != "mnist" or data != bare.DATA:
        problems.append(f"data: source {cfg.data.source}, {data} != the official files, {bare.DATA}")
    if cfg.precision != "fp32":
        problems.append(f"precision {cfg.precision} != fp32")
    if len(cfg.layers) != len(bare.LAYERS):
        problems.append(f"{len(cfg.layers)} layers != {len(bare.LAYERS)}")
    for i, (layer, expected) in enumerate(zip(cfg.layers, bare.LAYERS)):
        got = layer.model_dump()
        wanted = {"kind": "dense", **bare.LAYER_COMMON, **expected}
        diff = {k: (got.get(k), v) for k, v in wanted.items() if got.get(k) != v}
        if diff:
            problems.append(f"layers.{i}: {diff} (pipelines.yaml, bare)")
    ft = cfg.finetune.in_force().model_dump()
    diff = {k: (ft.get(k), v) for k, v in bare.FINETUNE.items() if ft.get(k) != v}
    if diff:
        problems.append(f"finetune: {diff} (pipelines.yaml, bare)")
    if cfg.n_labels() != cfg.data.n_train or cfg.retrieval or cfg.ablation or cfg.unroll:
        problems.append("quickstart no longer fine-tunes one classifier on every training label")
    if problems:
        raise RuntimeError("benchmarks/bare_quickstart.py no longer does quickstart's work: " + "; ".join(problems))


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the bench process dies (Linux), so an interrupted
    bench leaves no training process behind (the layerwise one then ends its runs KILLED)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _timed(cmd: list[str], env: dict, log_path: Path) -> dict:
    """Runs cmd to its end; wall from fork to reaping, CPU from wait4 (the process and the children
    it reaped), load average before and after."""
    load_before = os.getloadavg()
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = log_path.read_text()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-3000:]}")
    return {"process_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, "load_before": load_before[0], "load_after": os.getloadavg()[0],
            "output": output}


def run_bare(scratch: Path, label: str, quick: bool) -> dict:
    out = scratch / f"{label}.json"
    cmd = [sys.executable, "-m", "benchmarks.bare_quickstart", "--data-root", str(data_root()), "--out", str(out)]
    if quick:
        cmd += ["--train-size", str(QUICK["train_size"]), "--finetune-epochs", str(QUICK["finetune_epochs"])]
    run = _timed(cmd, {**os.environ}, scratch / f"{label}.log")
    result = json.loads(out.read_text())
    run.pop("output")
    return {**run, "kind": "bare", "test_error": result["test_error"], "best_epoch": result["best_epoch"],
            "final_recon": {stage: m["recon_loss"] for stage, m in result["final_recon"].items()},
            "import_seconds": result["import_seconds"], "work_seconds": result["work_seconds"]}


def _tracked(db: Path) -> dict:
    """What the layerwise run recorded in its private store: the parent run's test error and flow
    wall time, each stage's final recon loss, the fine-tune's kept epoch (full precision)."""
    from mlflow.tracking import MlflowClient

    mlf = MlflowClient(f"sqlite:///{db}")
    experiment = mlf.get_experiment_by_name(PIPELINE)
    runs = mlf.search_runs([experiment.experiment_id], max_results=100)
    found = {"final_recon": {}}
    for run in runs:
        stage, metrics = run.data.tags.get("layerwise.stage"), run.data.metrics
        if stage is None:  # the parent
            found["test_error"] = metrics["test_error"]
            found["flow_seconds"] = metrics["wall_seconds"]
        elif stage.startswith("pretrain"):
            found["final_recon"][stage] = metrics["recon_loss"]
        elif stage == "finetune":
            found["best_epoch"] = int(metrics["best_epoch"])
    found["final_recon"] = dict(sorted(found["final_recon"].items()))
    return found


def run_layerwise(scratch: Path, label: str, quick: bool) -> dict:
    private = scratch / label
    (private / "mlruns").mkdir(parents=True)
    db = private / "mlruns" / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "LAYERWISE_WORKDIR": str(private / "work"),
           "MNIST_ROOT": str(data_root()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the command as a user runs it: its own temporary API
    cmd = [str(Path(sys.executable).parent / "layerwise"), "run", PIPELINE]
    if quick:
        cmd += ["--set", f"data.train_size={QUICK['train_size']}", "--set", f"finetune.epochs={QUICK['finetune_epochs']}"]
    run = _timed(cmd, env, scratch / f"{label}.log")
    shown = re.search(r"test error ([0-9.]+)%", run.pop("output"))
    tracked = _tracked(db)
    if shown and abs(float(shown.group(1)) - tracked["test_error"]) > 0.006:
        raise RuntimeError(f"{label}: printed test error {shown.group(1)}% but tracked {tracked['test_error']}")
    return {**run, "kind": "layerwise", **tracked}


def _same(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def run(pairs: int = 2, quick: bool = False, log: Callable[[str], None] = print) -> dict:
    """pairs x (bare, layerwise), alternated; the ratio of the summed process times."""
    check_bare_settings()
    scratch = Path(tempfile.mkdtemp(prefix="layerwise-e2e-"))
    runs = []
    try:
        for pair in range(1, pairs + 1):
            for kind, fn in (("bare", run_bare), ("layerwise", run_layerwise)):
                r = fn(scratch, f"{kind}-{pair}", quick)
                r["pair"] = pair
                runs.append(r)
                log(f"  {kind} #{pair}: {r['process_seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU, test error "
                    f"{r['test_error']:.2f}% (load {r['load_before']:.2f} -> {r['load_after']:.2f})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    bare_runs = [r for r in runs if r["kind"] == "bare"]
    lw_runs = [r for r in runs if r["kind"] == "layerwise"]
    total = {k: sum(r["process_seconds"] for r in rs) for k, rs in (("bare", bare_runs), ("layerwise", lw_runs))}
    cpu = {k: sum(r["cpu_seconds"] for r in rs) for k, rs in (("bare", bare_runs), ("layerwise", lw_runs))}
    ref, lw = bare_runs[0], lw_runs[0]
    recon_same = all(_same(ref["final_recon"].get(s, float("nan")), v) for s, v in lw["final_recon"].items())
    result = {
        "pipeline": PIPELINE, "quick": quick, "pairs": pairs, "runs": runs, "target": TARGET,
        "bare_seconds": total["bare"] / pairs, "layerwise_seconds": total["layerwise"] / pairs,
        "ratio": total["layerwise"] / total["bare"],
        "pair_ratios": [l["process_seconds"] / b["process_seconds"] for b, l in zip(bare_runs, lw_runs)],
        "cpu_ratio": cpu["layerwise"] / cpu["bare"],
        "layerwise_outside_flow_seconds": sum(r["process_seconds"] - r["flow_seconds"] for r in lw_runs) / pairs,
        "test_error": {"bare": ref["test_error"], "layerwise": lw["test_error"]},
        "identical_metrics": _same(ref["test_error"], lw["test_error"]) and recon_same
                             and ref["best_epoch"] == lw["best_epoch"],
        "repeatable": len({r["test_error"] for r in bare_runs}) == 1 and len({r["test_error"] for r in lw_runs}) == 1}
    return result
