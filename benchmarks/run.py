"""`make bench`: every figure is a ratio measured side by side in this one run, so it holds on a
noisy machine. Writes benchmarks/results/latest.json and latest.md and prints the table. The last
section is the end-to-end line (benchmarks/e2e.py): the whole `layerwise run quickstart` command
against benchmarks/bare_quickstart.py, alternated; `--only e2e` runs it alone (results/e2e.*)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import cpu, data_sources, e2e, kernels, semi_supervised
from benchmarks.report import markdown
from layerwise.config import load_pipeline
from layerwise.machine.cpu import isa_summary
from layerwise.datasets.mnist import load_mnist
from layerwise.paths import PROJECT_ROOT, data_root

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
SMALL_GRID = ["--set", "ablation={labels: [100, 1000], seeds: [0], inits: [pretrained, scratch]}",
              "--set", "finetune.epochs=1", "--set", "finetune.min_steps=400", "--set", "finetune.keep=last"]


def log(text: str) -> None:
    print(text, flush=True)


def pipeline_run(name: str, overrides: list[str], workdir: Path, store: Path, label: str) -> dict:
    """The pipeline in a fresh, instrumented process (its own peak RSS), against a scratch store."""
    out = workdir.parent / f"{label}.json"
    env = {**os.environ, "LAYERWISE_WORKDIR": str(workdir), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    log(f"- {label}: layerwise run {name} {' '.join(overrides)}")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.pipeline_run", name, *overrides, "--out", str(out)],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{label} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - started
    log(f"  wall {result['wall_seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


COMPUTE = ("compute:", "encoding")  # the model's math: training, evaluation, encoding the splits


def orchestration(run: dict) -> dict:
    """Split of one run's wall time: compute (the model's math) against everything else (data
    loading, intermediate files, MLflow, Prefect)."""
    seconds = run["seconds"]
    compute = sum(v for k, v in seconds.items() if k.startswith(COMPUTE))
    return {"wall_seconds": run["wall_seconds"], "compute_seconds": compute,
            "non_compute_fraction": 1 - compute / run["wall_seconds"], "parts": seconds,
            "import_seconds": run["import_seconds"]}


def pretraining_seconds(run: dict) -> float:
    """Training the autoencoders, or finding them in the stage store."""
    return sum(v for k, v in run["seconds"].items() if k.startswith("compute:pretrain")) + \
        run["seconds"].get("cache_lookup", 0.0)


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    return {"slope": slope, "intercept": intercept, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def commit() -> str | None:
    """The checkout measured: HEAD, '+dirty' when tracked files differ from it (others may be editing)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for trying the suite out")
    parser.add_argument("--only", choices=["e2e", "data", "cpu", "semi"], default=None,
                        help="run one section alone (writes results/SECTION.json and .md, latest.* untouched); e2e: "
                             "`layerwise run quickstart` against a bare PyTorch script; data: MNIST as a folder of "
                             "PNGs, decoded and read from the decode cache; cpu: the ISA, fp32 and bf16 peaks, each "
                             "stage's fraction of its precision's peak, quickstart in fp32 and bf16; semi: a semi-supervised "
                             "step against a plain one, time against FLOPs")
    parser.add_argument("--pairs", type=int, default=2,
                        help="end-to-end line: how many (bare, layerwise) pairs, alternated (default: %(default)s)")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    started = time.perf_counter()
    results: dict = {"machine": {"cpus": threads, "gpu": torch.cuda.is_available(), "torch": torch.__version__,
                                 "processor": platform.processor() or platform.machine()},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_before": os.getloadavg(),
                     "commit": commit()}
    if args.only is None:
        run_sections(args, results, threads)
    if args.only == "cpu":
        results["machine"]["processor"] = isa_summary()["processor"]
        scratch = Path(tempfile.mkdtemp(prefix="layerwise-bench-"))
        try:
            log(f"== the CPU at its limit ({threads} threads)")
            results["cpu"] = cpu_section(args, threads, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.only == "semi":
        log("== a semi-supervised step against a plain one (unlabelled-ablation's 100-label cell)")
        mnist = load_mnist(data_root(), None, 10000, 0)
        results["semi_supervised"] = semi_supervised.run(mnist.x_train, mnist.y_train, threads, log=log)
    if args.only == "data":
        scratch = Path(tempfile.mkdtemp(prefix="layerwise-bench-"))
        try:
            log("== data sources: MNIST as a folder of PNGs, decoded once, then from the decode cache")
            results["data_sources"] = data_sources.run(data_root(), scratch, args.quick, log=log)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.only in (None, "e2e"):
        log(f"== end to end: the whole `layerwise run quickstart` against a bare PyTorch script, {args.pairs} pair(s)")
        results["e2e"] = e2e.run(args.pairs, args.quick, log=log)
    results["load_after"] = os.getloadavg()
    results["bench_seconds"] = time.perf_counter() - started
    results["quick"] = args.quick
    RESULTS.mkdir(parents=True, exist_ok=True)
    # a section alone never overwrites the full report; quick runs never overwrite measured ones
    name = ("quick" if args.quick else "latest") if args.only is None else \
        (f"quick.{args.only}" if args.quick else args.only)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    report = markdown(results)
    (RESULTS / f"{name}.md").write_text(report)
    log("\n" + report)
    return 0


def cpu_section(args, threads: int, scratch: Path, fp32_run: dict | None = None) -> dict:
    quick_cfg = load_pipeline("quickstart")
    mnist = load_mnist(data_root(), None, quick_cfg.data.val_size, 0)
    x, xv = (mnist.x_train[:10000], mnist.x_val[:2000]) if args.quick else (mnist.x_train, mnist.x_val)
    shapes = [(lc.input, lc.size) for lc in quick_cfg.layers]
    isa = isa_summary()
    log(f"processor {isa['processor']}: torch CPU capability {isa['torch_capability']}, bf16 matmuls "
        f"{isa['bf16_matmul']}")
    result = {"isa": isa, **cpu.stages(x, xv, threads, shapes, quick_cfg.layers[0].batch_size,
                                       quick_cfg.layers[0].l1, log=log)}
    del mnist, x, xv
    log("== quickstart in fp32 and in bf16")
    result["quickstart"] = cpu.quickstart_precisions(pipeline_run, orchestration, scratch, quick_shrink(args.quick),
                                                     log, fp32_run)
    return result


def quick_shrink(quick: bool) -> list[str]:
    """--quick: quickstart on fewer images and epochs."""
    return ["--set", "data.train_size=20000", "--set", "finetune.epochs=2"] if quick else []


def run_sections(args, results: dict, threads: int) -> None:
    """Kernels, scaling, quickstart twice, a grid, memory: everything but the end-to-end line."""
    scratch = Path(tempfile.mkdtemp(prefix="layerwise-bench-"))
    quick_cfg = load_pipeline("quickstart")
    layer = quick_cfg.layers[0]
    try:
        log(f"== kernels ({threads} threads, batch {layer.batch_size}, the quickstart stack)")
        mnist = load_mnist(data_root(), None, quick_cfg.data.val_size, 0)
        x, xv = (mnist.x_train[:10000], mnist.x_val[:2000]) if args.quick else (mnist.x_train, mnist.x_val)
        stages = [(lc.input, lc.size) for lc in quick_cfg.layers]
        results["kernels"] = kernels.run(x, xv, threads, stages, layer.batch_size, layer.l1,
                                         repeats=1 if args.quick else 2, log=log)
        results["kernels"]["step_profile"] = kernels.step_profile(784, 1000, layer.batch_size, layer.l1, threads)
        for name, prof in results["kernels"]["step_profile"].items():
            log(f"  784->1000 step, {name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in prof["ms_per_step"].items())
                + f"; {prof['gflops']:.0f} GFLOP/s")
        log("== a semi-supervised step against a plain one (unlabelled-ablation's 100-label cell)")
        results["semi_supervised"] = semi_supervised.run(mnist.x_train, mnist.y_train, threads,
                                                         steps=20 if args.quick else 100, log=log)
        log("== scaling: epoch time against images and batch size (784->1000)")
        sizes = [2500, 5000, 10000] if args.quick else [10000, 25000, 50000]
        results["scaling"] = kernels.scaling(x, xv, threads, sizes, [64, 128, 256, 512, 1024], layer.batch_size,
                                             layer.l1, log=log)
        del mnist, x, xv

        log("== data sources: MNIST as a folder of PNGs, decoded once, then from the decode cache")
        results["data_sources"] = data_sources.run(data_root(), scratch, args.quick, log=log)

        log("== quickstart twice (the second reuses the stack)")
        work, store = scratch / "work", scratch / "mlruns"
        shrink = quick_shrink(args.quick)
        first = pipeline_run("quickstart", shrink, work, store, "quickstart-1")
        second = pipeline_run("quickstart", shrink, work, store, "quickstart-2")
        results["orchestration"] = orchestration(first)
        results["reuse"] = {
            "first_pretraining_seconds": pretraining_seconds(first),
            "second_pretraining_seconds": pretraining_seconds(second),
            "pretraining_fraction": pretraining_seconds(second) / pretraining_seconds(first),
            "wall_fraction": second["wall_seconds"] / first["wall_seconds"],
            "second_run_parts": second["seconds"]}

        log("== a 4-cell grid over the quickstart stack, 2 workers then 1 (cells cleared in between)")
        grids = {}
        for workers in (2, 1):
            shutil.rmtree(work / "cells", ignore_errors=True)
            grids[workers] = pipeline_run("quickstart", shrink + SMALL_GRID + ["--set", f"ablation.workers={workers}"],
                                          work, store, f"grid-{workers}-workers")
        cells = grids[2]["result"]["cells"]
        fine_tunes = sum(c["train_seconds"] for c in cells)
        results["reuse"]["grid"] = {
            "cells": len(cells), "pretraining_once_seconds": pretraining_seconds(first),
            "grid_pretraining_seconds": pretraining_seconds(grids[2]),
            "fine_tune_seconds_sum": fine_tunes, "grid_wall_seconds": grids[2]["wall_seconds"],
            "grid_vs_pretrain_once_plus_fine_tunes": (pretraining_seconds(first) + grids[2]["wall_seconds"]) /
                                                     (pretraining_seconds(first) + fine_tunes)}
        results["scaling"]["ablation_workers"] = [
            {"workers": w, "threads_per_worker": max(1, threads // w), "wall_seconds": grids[w]["wall_seconds"]}
            for w in (1, 2)]

        log("== memory: peak RSS against training images (1 epoch per stage)")
        memory = []
        for n in ([6000, 12000, 20000] if args.quick else [10000, 30000, 60000]):
            run = pipeline_run("quickstart", ["--set", f"data.train_size={n}", "--set", "data.val_size=2000",
                                              "--set", "finetune.epochs=1"] +
                               [f"--set=layers.{i}.epochs=1" for i in range(3)],
                               scratch / f"mem-{n}", store, f"memory-{n}")
            memory.append({"images": n, "peak_rss_mb": run["peak_rss_mb"]})
        fit = linear_fit([m["images"] / 10000 for m in memory], [m["peak_rss_mb"] for m in memory])
        ablation = pipeline_run("label-ablation", [f"--set=layers.{i}.epochs=1" for i in range(3)] +
                                ["--set", "finetune.min_steps=200", "--set", "ablation.seeds=[0]"],
                                scratch / "ablation", store, "label-ablation-memory")
        results["memory"] = {"quickstart_peak_rss_mb": first["peak_rss_mb"],
                             "label_ablation_peak_rss_mb": ablation["peak_rss_mb"],
                             "label_ablation_cells": len(ablation["result"]["cells"]),
                             "by_images": memory, "mb_per_10k_images": fit["slope"], "fit_r2": fit["r2"]}

        log("== the CPU at its limit: ISA, fp32 and bf16 peaks, stages in each precision, quickstart in bf16")
        results["cpu"] = cpu_section(args, threads, scratch, fp32_run=first)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
