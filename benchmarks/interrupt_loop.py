"""Ctrl-C at random moments, many times: how long the exit takes and whether any MLflow run is left
neither KILLED nor FINISHED (the rare 61-81 s exit with "database is locked" that tests/test_interrupt.py
saw twice in many full runs, never on demand).

    nice -n 19 python -m benchmarks.interrupt_loop --runs 50 --grids 50 [--seed 0] [--signal TERM] [--out FILE]

Each iteration starts `python -m flows run smoke` (or `smoke-ablation`) in its own process group,
waits a random time, uniform from 0 to the duration of an uninterrupted run of that pipeline
(measured first, and shortened to any run that finished before its signal: the machine got
quicker), and sends SIGINT to the group, as a terminal's Ctrl-C does (--signal TERM: SIGTERM, as a
scheduler's cancel). Iterations go on until --runs smoke runs and --grids grids were interrupted;
a run that finished before its signal is recorded, not counted. After each exit every run in the store must be KILLED or
FINISHED, and no process of the run may be left. The loop owns everything it touches: one
temporary MLflow store and Prefect home for the whole loop (runs accumulate, as in a user's store,
and the stale-run check reads them all; the Prefect database is made before the first run), and a fresh LAYERWISE_WORKDIR per iteration (so each run
trains its stages rather than reusing them). Writes one JSON line per iteration to --out and prints
the summary (exit-time percentiles, runs left open, "database is locked" seen) at the end; the
figures are quoted in docs/operating.md."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from layerwise.paths import PROJECT_ROOT, data_root

PIPELINES = ("smoke", "smoke-ablation")
HUNG_S = 300  # an exit slower than this is killed and recorded as hung
ENDED = {"KILLED", "FINISHED"}


def run_env(store: Path, prefect_home: Path, workdir: Path) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "LAYERWISE_WORKDIR": str(workdir),
           "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MNIST_ROOT": str(mnist_root()), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)  # the run starts its own temporary API, as `make run` does
    return env


def mnist_root() -> Path:
    """$MNIST_ROOT, else ../shared/data beside the checkout where it exists (as the Makefile sets)."""
    beside = PROJECT_ROOT.parent / "shared" / "data"
    return data_root() if os.environ.get("MNIST_ROOT") or not beside.exists() else beside.resolve()


def default_sigint() -> None:
    """Ctrl-C's default disposition in the child, as in a terminal (a loop started with `&` from a
    script ignores SIGINT, and children would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_run(pipeline: str, env: dict[str, str], log: Path, delay: float | None, sig: int = signal.SIGINT) -> dict:
    """The pipeline, sent sig after delay seconds (None: left to finish). Returns what happened."""
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows", "run", pipeline], cwd=PROJECT_ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=default_sigint)
        children: set[psutil.Process] = set()
        deadline = None if delay is None else started + delay
        while proc.poll() is None and (deadline is None or time.monotonic() < deadline):
            try:  # the run's processes (its temporary Prefect API), to check none outlives it
                children.update(psutil.Process(proc.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)
        sent = None
        if proc.poll() is None:
            sent = time.monotonic()
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=HUNG_S if delay is not None else 900)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        ended = time.monotonic()
    _, alive = psutil.wait_procs(list(children), timeout=15)
    text = log.read_text(errors="replace")
    lines = text[:text.find("interrupted:")].strip().splitlines() if sent else []
    return {"pipeline": pipeline, "delay_s": delay, "interrupted": sent is not None, "returncode": proc.returncode,
            "load_1min": round(os.getloadavg()[0], 2),  # the machine's load when it exited
            "exit_s": None if sent is None else round(ended - sent, 3), "run_s": round(ended - started, 3),
            "hung": hung, "left_processes": [" ".join(p.cmdline()[:4]) for p in alive if p.is_running()],
            "database_locked": text.count("database is locked"), "traceback": "Traceback" in text,
            "last_line_before": lines[-1][:200] if lines else ""}


def open_runs(store: Path) -> list[dict]:
    """Every run of the store that is neither KILLED nor FINISHED (read with sqlite, read-only:
    the loop must not hold the store's lock or import MLflow's store)."""
    import sqlite3

    db = store / "mlflow.db"
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60) as con:
        rows = con.execute("select run_uuid, name, status from runs where status not in ('KILLED', 'FINISHED')")
        return [{"run_id": r[0], "name": r[1], "status": r[2]} for r in rows]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"n": len(values), "p50": round(cuts[49], 2), "p90": round(cuts[89], 2), "p99": round(cuts[98], 2),
            "max": round(max(values), 2), "min": round(min(values), 2)}


def summary(rows: list[dict]) -> dict:
    out = {}
    for pipeline in (*PIPELINES, "all"):
        mine = [r for r in rows if pipeline in ("all", r["pipeline"]) and r["delay_s"] is not None]
        cut = [r for r in mine if r["interrupted"]]
        out[pipeline] = {
            "iterations": len(mine), "interrupted": len(cut), "finished_before_signal": len(mine) - len(cut),
            "exit_s": percentiles([r["exit_s"] for r in cut]),
            "exit_codes": {str(code): sum(r["returncode"] == code for r in mine)
                           for code in sorted({r["returncode"] for r in mine})},
            "runs_left_open": sum(len(r["open_runs"]) for r in mine),
            "hung": sum(r["hung"] for r in mine), "left_processes": sum(bool(r["left_processes"]) for r in mine),
            "database_locked": sum(bool(r["database_locked"]) for r in mine),
            "tracebacks": sum(r["traceback"] for r in mine),
            "load_1min": percentiles([r["load_1min"] for r in cut]),
            "slowest": [{k: r[k] for k in ("iteration", "exit_s", "delay_s", "load_1min", "last_line_before")}
                        for r in sorted(cut, key=lambda r: -r["exit_s"])[:3]]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="interrupted `smoke` runs (default 50)")
    parser.add_argument("--grids", type=int, default=50, help="interrupted `smoke-ablation` grids (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signal", default="INT", choices=("INT", "TERM"),
                        help="INT: a terminal's Ctrl-C (default); TERM: a scheduler's cancel; sent to the group")
    parser.add_argument("--out", default=None, help="JSON lines, one per iteration (default: in the loop's folder)")
    parser.add_argument("--keep", action="store_true", help="keep the loop's temporary folder (logs, store)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="layerwise-interrupt-loop-"))
    store, prefect_home = root / "mlruns", root / "prefect"
    out = Path(args.out) if args.out else root / "iterations.jsonl"
    print(f"loop folder {root}; iterations to {out}; SIG{args.signal} to each run's process group", flush=True)
    # the loop's Prefect database made first, with no time limit: a run's temporary API then starts
    # over an existing database, as a user's does (creating one on a busy machine can pass its 180 s)
    subprocess.run([str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
                   env=run_env(store, prefect_home, root / "work"), check=True, stdout=subprocess.DEVNULL)
    full = {}
    for pipeline in PIPELINES:  # an uninterrupted run of each: its duration bounds the random moments
        row = one_run(pipeline, run_env(store, prefect_home, root / f"work-full-{pipeline}"), root / f"full-{pipeline}.log",
                      None)
        if row["returncode"] != 0:
            raise SystemExit(f"an uninterrupted {pipeline} failed: see {root / f'full-{pipeline}.log'}")
        full[pipeline] = row["run_s"]
        print(f"uninterrupted {pipeline}: {row['run_s']:.1f} s", flush=True)
    wanted = {PIPELINES[0]: args.runs, PIPELINES[1]: args.grids}
    window = dict(full)  # the random moment falls in [0, window): a run's duration on this machine
    rows, i = [], 0
    with open(out, "w") as sink:
        while any(wanted.values()):
            pipeline = rng.choice([name for name, left in wanted.items() if left])
            delay = round(rng.uniform(0, window[pipeline]), 2)
            row = one_run(pipeline, run_env(store, prefect_home, root / f"work-{i}"), root / f"run-{i}.log", delay,
                          getattr(signal, f"SIG{args.signal}"))
            row.update(iteration=i, open_runs=open_runs(store), window_s=window[pipeline], signal=args.signal)
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            if row["interrupted"]:
                wanted[pipeline] -= 1
            elif row["returncode"] == 0:
                window[pipeline] = min(window[pipeline], row["run_s"])
            print(f"{i + 1} {pipeline}: signal at {delay:.1f} s, "
                  + (f"exit {row['returncode']} after {row['exit_s']:.1f} s" if row["interrupted"]
                     else f"finished first (exit {row['returncode']})")
                  + f", load {row['load_1min']}; {wanted[PIPELINES[0]]} runs, {wanted[PIPELINES[1]]} grids to go"
                  + (f", OPEN RUNS {row['open_runs']}" if row["open_runs"] else "")
                  + (", DATABASE LOCKED" if row["database_locked"] else "")
                  + (f", LEFT {row['left_processes']}" if row["left_processes"] else ""), flush=True)
            shutil.rmtree(root / f"work-{i}", ignore_errors=True)
            i += 1
    result = summary(rows)
    print(json.dumps(result, indent=2))
    out.with_suffix(".summary.json").write_text(json.dumps({"full_run_s": full, "signal": args.signal, **result},
                                                            indent=2))
    if not args.keep:  # the logs of anything unusual stay for reading
        unusual = {r["iteration"] for r in rows if r["open_runs"] or r["hung"] or r["database_locked"]
                   or r["left_processes"] or (r["exit_s"] or 0) > 10 or r["traceback"]
                   or r["returncode"] not in (0, 130)}
        for i in set(range(len(rows))) - unusual:
            (root / f"run-{i}.log").unlink(missing_ok=True)
    return 0 if all(not r["open_runs"] and not r["hung"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
