"""Where the whole `layerwise run` process spends the time a bare PyTorch script does not: the fixed
start-up and shut-down costs behind the end-to-end line (benchmarks/e2e.py). A diagnostic, not part
of `make bench`:

    python -m benchmarks.startup_profile [--out F.json] [--epochs 1]      # the profile (about 2 min)
    python -m benchmarks.startup_profile --compare ";gc-freeze-imports" --train-size 20000 --repeats 2

1. Interpreter and imports: `python -c pass`, `import torch, torchvision` (the bare script's imports)
   and `layerwise --help` as processes, and `-X importtime` of `layerwise --help` and of what `run`
   imports later, summed per top-level package (self time, so a package is charged once).
2. One `layerwise run quickstart` (every image, `--epochs` epochs per stage and for fine-tuning,
   a fresh sqlite MLflow store and LAYERWISE_WORKDIR) in an instrumented process: exclusive wall
   time per part (benchmarks/timers.py), the Prefect engine as the remainder of the flow, the time
   after main() returns to the process's end measured from outside, and a cProfile of the model
   logging (tasks/finetune.py _log_model).
3. --compare: proposals tried from outside, without editing the project (the gc.freeze call after
   the imports): the same run per variant, alternated, process wall and its parts. Two earlier
   proposals measured this way are now the project's: the temporary API launched first and waited
   for last (flows/prefect_api.py), the collector's objects frozen at exit (flows/cli.py).
"""
from __future__ import annotations

import time

STARTED = time.perf_counter()
STARTED_WALL = time.time()

import argparse  # noqa: E402
import atexit  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAYERWISE = str(Path(sys.executable).parent / "layerwise")
RUN_IMPORTS = ["tasks.tracking", "flows.pipeline", "flows.prefect_api"]  # what cmd_run imports after the CLI


def _process(cmd: list[str], env: dict | None = None) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # cumulative: differences are taken by the caller
    if proc.returncode:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {err[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "stdout": out, "stderr": err}


def timed_process(cmd: list[str], repeats: int = 3, env: dict | None = None) -> dict:
    """Best of `repeats` (wall and CPU: the machine is shared, the minimum is the cost)."""
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = _process(cmd, env)
        walls.append(r["wall"])
        cpus.append(r["cpu"] - (before.ru_utime + before.ru_stime))
    return {"wall_best": min(walls), "cpu_best": min(cpus), "walls": walls}


def parse_importtime(stderr: str) -> dict:
    """-X importtime lines: self and cumulative µs per module, nesting by indentation."""
    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
    by_package: dict[str, float] = defaultdict(float)
    for self_us, _, _, name in rows:
        by_package[name.split(".")[0]] += self_us / 1e6
    top = sorted(((cum / 1e6, name) for _, cum, depth, name in rows if depth == 0), reverse=True)
    return {"total_seconds": sum(r[0] for r in rows) / 1e6,
            "by_package": dict(sorted(by_package.items(), key=lambda kv: -kv[1])),
            "top_level": [{"module": n, "cumulative_seconds": s} for s, n in top[:25]]}


def imports_section(repeats: int) -> dict:
    py = sys.executable
    result = {"python -c pass": timed_process([py, "-c", "pass"], repeats),
              "import torch, torchvision (bare script)": timed_process(
                  [py, "-c", "import torch, torchvision.datasets"], repeats),
              "layerwise --help": timed_process([LAYERWISE, "--help"], repeats),
              "layerwise --help, then run's imports": timed_process(
                  [py, "-c", "import flows.cli; " + "; ".join(f"import {m}" for m in RUN_IMPORTS)], repeats)}
    help_times = _process([py, "-X", "importtime", LAYERWISE, "--help"])
    result["importtime layerwise --help"] = parse_importtime(help_times["stderr"])
    code = "import flows.cli; import sys; print('---', file=sys.stderr); " + "; ".join(f"import {m}" for m in RUN_IMPORTS)
    run_times = _process([py, "-X", "importtime", "-c", code])
    result["importtime run's later imports"] = parse_importtime(run_times["stderr"].split("---", 1)[1])
    return result


# --- the instrumented run (in a child process) -------------------------------------------------

def child(args) -> None:
    from benchmarks.timers import Ledger

    variants = set(filter(None, args.variant.split(",")))
    import psutil

    marks = {"process_started": STARTED,
             "before_first_line": STARTED_WALL - psutil.Process().create_time()}  # interpreter start, site
    t = time.perf_counter()
    import flows.cli
    marks["import flows.cli (layerwise --help's imports)"] = time.perf_counter() - t
    for module in RUN_IMPORTS:  # imported here rather than lazily inside main, so they are timed apart
        t = time.perf_counter()
        __import__(module)
        marks[f"import {module}"] = time.perf_counter() - t

    import mlflow.store.db.utils as db_utils
    import torch
    from mlflow.tracking import MlflowClient

    import flows.pipeline
    import layerwise.datasets.mnist
    import layerwise.train.finetune
    import layerwise.train.autoencoder
    import layerwise.train.evaluate
    import tasks.data
    import tasks.finetune
    import tasks.runs
    import tasks.tracking
    from layerwise.store.cache import Store

    MODEL_LOG, PARENT, MLFLOW = "model logging (_log_model)", "open the parent run (open_pipeline_run)", "MLflow calls"
    # sticky: what these call stays theirs (torch.save inside log_model); MLflow calls are not sticky,
    # so a fresh store's table creation, made inside the first client call, shows apart
    ledger = Ledger(sticky=(MODEL_LOG, PARENT))
    api = sys.modules["flows.prefect_api"]  # launched first thing in cmd_run, waited for before the flow
    ledger.patch(api, "launch_temporary_api", "temporary Prefect API: launch")
    ledger.patch(api.TemporaryAPI, "ready", "temporary Prefect API: wait for its start")
    ledger.patch(api.TemporaryAPI, "stop", "temporary Prefect API: stop (atexit)")
    ledger.patch(api, "_start_prefect_server", "temporary Prefect API: Prefect's own start (another run was starting one)")
    ledger.patch(db_utils, "_initialize_tables", "MLflow: create the tables of a fresh sqlite store")
    ledger.patch(db_utils, "_verify_schema", "MLflow: verify the store's schema")
    ledger.patch(tasks.tracking, "check_store", "MLflow store check (check_store)")
    ledger.patch(layerwise.datasets.mnist, "verify_mnist", "MNIST MD5 check")
    for module_name in ("flows.cli", "flows.checks", "flows.pipeline"):
        module = sys.modules.get(module_name)
        for name, what in (("load_pipeline", "config: load and validate"), ("check_fits", "config: memory estimate"),
                           ("check_schedules", "config: schedule check (Prefect cron model)")):
            if module is not None and hasattr(module, name):
                ledger.patch(module, name, what)
    ledger.patch(tasks.data, "load_source", "data: decode MNIST and split")
    ledger.patch(tasks.data, "split_source", "data: decode MNIST and split")
    for name in ("save", "load"):
        ledger.patch(torch, name, "intermediate files (torch.save / torch.load)")
    ledger.patch(layerwise.train.autoencoder, "train_autoencoder", "compute")
    ledger.patch(layerwise.train.evaluate, "encode", "compute")
    ledger.patch(layerwise.train.finetune, "train_classifier", "compute")
    ledger.patch(tasks.finetune, "accuracy", "compute")
    for name in ("get", "put", "load"):
        if hasattr(Store, name):
            ledger.patch(Store, name, "stage store (get/put/load)")
    for name, member in vars(MlflowClient).items():
        if not name.startswith("_") and callable(member) and not isinstance(member, (staticmethod, classmethod)):
            ledger.patch(MlflowClient, name, MLFLOW)
    tasks.runs.open_pipeline_run.fn = ledger.wrap(PARENT, tasks.runs.open_pipeline_run.fn)

    profile = cProfile.Profile()
    log_model = tasks.finetune._log_model

    def profiled_log_model(*a, **k):
        profile.enable()
        try:
            return log_model(*a, **k)
        finally:
            profile.disable()

    tasks.finetune._log_model = ledger.wrap(MODEL_LOG, profiled_log_model)
    flow = flows.pipeline.layerwise_pipeline
    flows.pipeline.layerwise_pipeline = ledger.wrap("Prefect engine, tasks and glue (rest of the flow)",
                                                    lambda *a, **k: flow(*a, **k))
    main = ledger.wrap("CLI: the rest of main()", flows.cli.main)
    argv = ["run", "quickstart", "--set", f"finetune.epochs={args.epochs}"] + \
        [f"--set=layers.{i}.epochs={args.epochs}" for i in range(3)] + \
        (["--set", f"data.train_size={args.train_size}"] if args.train_size else [])

    def write() -> None:  # registered before main runs: atexit runs it after Prefect's own handlers
        marks["atexit_done"] = time.perf_counter()
        stream = io.StringIO()
        stats = pstats.Stats(profile, stream=stream)
        stats.sort_stats("cumulative").print_stats(45)
        Path(args.child_out).write_text(json.dumps({
            "marks": marks, "seconds": dict(ledger.seconds), "calls": dict(ledger.calls),
            "log_model_profile": stream.getvalue()}, indent=2))

    atexit.register(write)
    if "gc-freeze-imports" in variants:  # proposal: imported modules' objects out of every later collection
        import gc

        gc.freeze()
    marks["main_started"] = time.perf_counter()
    code = main(argv)
    marks["main_returned"] = time.perf_counter()
    marks["prefect_server_imported_in_main"] = "prefect.server.api.server" in sys.modules
    if code:
        raise SystemExit(code)


def timeline_section(epochs: int, variant: str = "", train_size: int | None = None) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="layerwise-startup-"))
    try:
        out = scratch / "child.json"
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlruns' / 'mlflow.db'}",
               "LAYERWISE_WORKDIR": str(scratch / "work"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        (scratch / "mlruns").mkdir()
        started = time.perf_counter()
        r = _process([sys.executable, "-m", "benchmarks.startup_profile", "--child-out", str(out),
                      "--epochs", str(epochs), "--variant", variant] +
                     (["--train-size", str(train_size)] if train_size else []), env)
        wall = time.perf_counter() - started
        child_result = json.loads(out.read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    marks = child_result["marks"]
    t0 = marks["process_started"]
    parts = {"interpreter start and site (before the first line)": marks["before_first_line"],
             **{k: v for k, v in marks.items() if k.startswith("import ")}}
    seconds = child_result["seconds"]
    after_main = wall - (marks["main_returned"] - t0) - marks["before_first_line"]
    return {"variant": variant, "process_seconds": wall, "imports": parts,
            "prefect_server_imported_in_main": marks["prefect_server_imported_in_main"],
            "flow_and_checks_seconds": marks["main_returned"] - marks["main_started"], "in_main": seconds, "calls": child_result["calls"],
            "after_main_returned_seconds": after_main,
            "atexit_seconds": marks["atexit_done"] - marks["main_returned"],
            "log_model_profile": child_result["log_model_profile"], "stdout_tail": r["stdout"][-1500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per stage and for fine-tuning")
    parser.add_argument("--repeats", type=int, default=3, help="process timings: best of this many")
    parser.add_argument("--skip-imports", action="store_true")
    parser.add_argument("--train-size", type=int, default=None, help="as --set data.train_size (default: all)")
    parser.add_argument("--compare", default=None, metavar="V1;V2;...",
                        help="instead of the profile: the run once per variant, alternated, --repeats rounds; a "
                             "variant is a comma list of proposals, today only gc-freeze-imports (after the imports) ('' = as the project is)")
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_out:
        return child(args)
    load_before = os.getloadavg()
    result = {"load_before": load_before}
    if args.compare is not None:
        rounds = []
        for _ in range(args.repeats):
            for variant in args.compare.split(";"):
                t = timeline_section(args.epochs, variant, args.train_size)
                t.pop("log_model_profile")
                t["load_after"] = os.getloadavg()[0]
                rounds.append(t)
                print(f"variant {variant or 'as is':20s} process {t['process_seconds']:.2f} s, main "
                      f"{t['flow_and_checks_seconds']:.2f} s, after main {t['after_main_returned_seconds']:.2f} s, "
                      f"API start wait {t['in_main'].get('temporary Prefect API: wait for its start', 0):.2f} s, imports "
                      f"{sum(t['imports'].values()):.2f} s (load {t['load_after']:.2f})", file=sys.stderr, flush=True)
        result["compare"] = rounds
    else:
        if not args.skip_imports:
            result["imports"] = imports_section(args.repeats)
        result["timeline"] = timeline_section(args.epochs, train_size=args.train_size)
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
