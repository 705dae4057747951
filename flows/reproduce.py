"""`layerwise reproduce` (`make reproduce`): every command behind docs/claims.csv run afresh, then each
claim against the value measured now.

The commands run one after the other, in the file's order (runs that share stored stages and cells
are listed together, the one that trains them first), each as its own `layerwise run` process in
the same MLflow store, so a later run reuses what an earlier one trained. A finished command is
recorded (its MLflow run) in the work folder's reproduce/state.json: a call stopped half way (Ctrl-C,
a failure, a reboot) resumes with the first command not finished, and a grid stopped half way keeps
its finished cells in the cell store. Progress: each command's own lines, and the time left from
the walls the claims state (or earlier calls measured).

A command that resumes reuses what its stopped try had stored, so its own wall is short: the wall a
claim is checked against is every try's, summed (the state keeps the seconds of a try that did not
finish, written as it runs, so a killed call loses at most HEARTBEAT_S of them). Each finished
command records the machine and code it ran on: calls resumed on another machine say so in the
results.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from layerwise.config import ConfigError, load_pipeline
from layerwise.paths import PROJECT_ROOT, work_root
from layerwise.report.claims import (COMMAND_SECONDS, Claim, ClaimsError, Job, jobs, read_claims, restate,
                                     results_table, stated_like)
from layerwise.report.sections import labels, rewrite_file

RUN_ID = re.compile(r"MLflow parent run ([0-9a-f]{32})")
REPRODUCE_SECTION = "reproduce"
STOP_WAIT_S = 120  # an interrupted command marks its runs KILLED before it exits
HEARTBEAT_S = 30  # how often a running command's seconds so far are written to the state


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def job_overrides(job: Job, source: str) -> list[str]:
    """The --set values of a job's arguments (the only option a claim's command may carry besides
    --device)."""
    parser = argparse.ArgumentParser(prog=job.line(), add_help=False, exit_on_error=False)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--device", default=None)
    try:
        parsed, rest = parser.parse_known_args(list(job.args))
    except argparse.ArgumentError as exc:
        raise ClaimsError(f"{source}: `{job.line()}`: {exc}") from None
    if rest:
        raise ClaimsError(f"{source}: `{job.line()}`: only --set and --device may follow the pipeline, not {rest}")
    return parsed.overrides + ([f"device={parsed.device}"] if parsed.device else [])


def job_key(job: Job, config: str, source: str) -> str:
    """What decides a command's result: its command and its pipeline as resolved (--set applied).
    Checked here: a claim naming a pipeline or key that does not exist is bad input (exit 2)."""
    try:
        cfg = load_pipeline(job.pipeline, config, job_overrides(job, source))
    except ConfigError as exc:
        raise ConfigError(f"{source}: `{job.line()}`: {exc}") from None
    text = json.dumps({"command": job.command, "pipeline": job.pipeline, "config": cfg.model_dump()},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class State:
    """Finished commands by tracking store and job key: {uri: {key: {run_id, seconds, tries, line,
    started, finished, machine}}}; under "unfinished", the tries of commands not finished yet:
    {"unfinished": {uri: {key: {seconds, tries, started}}}}."""

    def __init__(self, uri: str):
        self.path, self.uri = work_root() / "reproduce" / "state.json", uri
        self.all = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.runs = self.all.setdefault(uri, {})
        self.unfinished = self.all.setdefault("unfinished", {}).setdefault(uri, {})
        self.lock = threading.Lock()  # the heartbeat writes from its thread

    def save(self) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.all, indent=1, sort_keys=True))
            os.replace(tmp, self.path)

    def tried(self, key: str, seconds: float, count: bool, started: Optional[str] = None) -> None:
        """A try's seconds so far (count: it ended, the next one is a new try); started: when it began."""
        with self.lock:
            earlier = self.unfinished.get(key) or {"seconds": 0.0, "tries": 0, "started": started or _now()}
            self.unfinished[key] = ({"seconds": earlier["seconds"] + seconds, "tries": earlier["tries"] + 1,
                                     "started": earlier["started"]} if count else {**earlier, "running": seconds})
        self.save()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _finished(client, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.status == "FINISHED"
    except Exception:  # noqa: BLE001 - a run deleted from the store: run the command again
        return False


class Ticker:
    """Every `every` seconds while a command runs: how long it has run and the time left in all; every
    HEARTBEAT_S (or `every`, if shorter) its seconds so far to `heartbeat`."""

    def __init__(self, every: float, job: Job, expected: Optional[float], after: float, heartbeat=None):
        self.every, self.job, self.expected, self.after, self.heartbeat = every, job, expected, after, heartbeat
        self.started, self.stop = time.monotonic(), threading.Event()
        self.thread = threading.Thread(target=self._tick, name="reproduce-ticker", daemon=True)

    def _tick(self) -> None:
        next_line = self.every
        while not self.stop.wait(min(self.every, HEARTBEAT_S)):
            elapsed = time.monotonic() - self.started
            if self.heartbeat is not None:
                self.heartbeat(elapsed)
            if elapsed < next_line:
                continue
            next_line += self.every
            left = None if self.expected is None else max(self.expected - elapsed, 0) + self.after
            print(f"reproduce: {duration(elapsed)} into `{self.job.line()}` (expected {duration(self.expected)}); "
                  f"about {duration(left)} left in all", flush=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()  # no heartbeat may land after the try is counted (it would be counted again)


def run_job(job: Job, config: str, data_root: Optional[str], tick: float, expected: Optional[float],
            after: float, heartbeat=None) -> tuple[Optional[str], float, str]:
    """Runs the command as its own process (its own session: a Ctrl-C reaches it once, from here),
    its output passed through. Returns (the MLflow parent run, the command's wall seconds, why it
    failed)."""
    command = [sys.executable, "-m", "flows", job.command, job.pipeline, *job.args, "--config", config]
    if data_root:
        command += ["--data-root", data_root]
    started, run_id, last_error = time.monotonic(), None, ""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               start_new_session=True)
    try:
        with Ticker(tick, job, expected, after, heartbeat):
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                found = RUN_ID.search(line)
                run_id = found.group(1) if found else run_id
                if line.startswith(("error:", "failed:")):
                    last_error = line.strip()
            code = process.wait()
    except BaseException:
        if process.poll() is None:
            # SIGTERM, which the command takes as it takes Ctrl-C (its runs end KILLED): a SIGINT would be
            # ignored where reproduce itself was started in the background (`make reproduce &` in a
            # script: the shell sets SIGINT ignored, and the command inherits that)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    seconds = time.monotonic() - started
    if code != 0:
        return None, seconds, f"exit {code}" + (f": {last_error}" if last_error else "")
    if run_id is None:
        return None, seconds, "it printed no MLflow parent run"
    return run_id, seconds, ""


def measure(claims: list[Claim], runs: dict[Job, dict], uri: str) -> dict[Claim, Optional[float]]:
    """Each claim's value in its command's run (its report page's values, or the command's wall)."""
    from tasks.experiments import read_page

    pages, measured = {}, {}
    for claim in claims:
        record = runs.get(claim.job)
        if record is None:
            measured[claim] = None
            continue
        if claim.metric == COMMAND_SECONDS:
            measured[claim] = record["seconds"]
            continue
        if claim.job not in pages:
            pages[claim.job] = read_page(claim.job.pipeline, uri, record["run_id"])
        value = pages[claim.job].values.get(claim.metric)
        if value is None:
            print(f"reproduce: line {claim.line}: run {record['run_id']} has no value '{claim.metric}' (its report's "
                  f"names: {', '.join(list(pages[claim.job].values)[:12])}, ...)", flush=True)
        measured[claim] = value
    return measured


def machine() -> str:
    import torch

    from layerwise.machine.cpu import processor_name

    try:
        commit = subprocess.run(["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{processor_name()}, {os.cpu_count()} logical CPUs, {gpu}; {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}" + (f"; code {commit}" if commit else ""))


def write_docs(into: str, runs: dict[Job, dict], uri: str, summary: Optional[str]) -> None:
    """The sections of `into` that name a measured command (report:PIPELINE, or PIPELINE ARGS), and
    with summary (a full reproduce) the report:reproduce section."""
    from flows.reporting import section_body
    from tasks.experiments import read_page

    present = set(labels(Path(into).read_text()))
    for job, record in runs.items():
        if job.label in present:
            page = read_page(job.pipeline, uri, record["run_id"], job.command == "sweep")
            rewrite_file(into, job.label, section_body(page, "make reproduce"))
            print(f"{into}: section report:{job.label} rewritten from MLflow run {record['run_id']}")
    if summary is not None and REPRODUCE_SECTION in present:
        rewrite_file(into, REPRODUCE_SECTION, summary)
        print(f"{into}: section report:{REPRODUCE_SECTION} rewritten")


def cmd_reproduce(args) -> int:
    from tasks.tracking import client, tracking_uri

    claims = read_claims(args.claims)
    only = [name.strip() for name in (args.only or "").split(",") if name.strip()]
    unknown = sorted(set(only) - {claim.job.pipeline for claim in claims})
    if unknown:
        raise ClaimsError(f"{args.claims}: no claim of pipeline(s) {', '.join(unknown)} (ONLY names pipelines of the file)")
    chosen = [claim for claim in claims if not only or claim.job.pipeline in only]
    todo = jobs(chosen)
    keys = {job: job_key(job, args.config, str(args.claims)) for job in todo}
    if args.into and not Path(args.into).is_file():
        raise ClaimsError(f"--into {args.into}: no such file")
    uri = tracking_uri()
    state = State(uri)
    if args.fresh:
        state.runs.clear()
        state.unfinished.clear()
    for key in list(state.unfinished):  # a try killed outright (no chance to count itself): count it now
        if "running" in state.unfinished[key]:
            state.tried(key, state.unfinished[key]["running"], count=True)
    mlf = client() if state.runs else None
    runs = {job: state.runs[keys[job]] for job in todo
            if keys[job] in state.runs and _finished(mlf, state.runs[keys[job]]["run_id"])}
    if args.restate:
        return restate_claims(args.claims, chosen, runs, uri)
    stated = {claim.job: claim.value for claim in chosen if claim.metric == COMMAND_SECONDS}
    earlier = {record["line"]: record["seconds"] for record in state.runs.values()}  # the same line, older config
    expected = {job: state.runs.get(keys[job], {}).get("seconds", earlier.get(job.line(), stated.get(job)))
                for job in todo}
    left = lambda after: sum(expected[j] or 0 for j in todo[after:] if j not in runs)  # noqa: E731
    print(f"reproduce: {len(chosen)} claim(s) of {args.claims} measured by {len(todo)} command(s) in MLflow {uri}; "
          f"{len(runs)} finished by an earlier call, {len(todo) - len(runs)} to run, about {duration(left(0))}"
          + ("" if all(expected[j] is not None for j in todo if j not in runs) else " (and some of unknown length)"),
          flush=True)
    failures, here = {}, machine()
    for index, job in enumerate(todo, 1):
        if job in runs:
            print(f"[{index}/{len(todo)}] `{job.line()}`: finished by an earlier call (MLflow run "
                  f"{runs[job]['run_id']}), not run again", flush=True)
            continue
        print(f"[{index}/{len(todo)}] `{job.line()}`: starting, expected {duration(expected[job])}; about "
              f"{duration(left(index - 1))} left in all", flush=True)
        key, began, began_at = keys[job], time.monotonic(), _now()
        earlier_try = state.unfinished.get(key, {"seconds": 0.0, "tries": 0})
        try:
            run_id, seconds, failure = run_job(job, args.config, args.data_root, args.tick, expected[job], left(index),
                                               heartbeat=lambda elapsed, key=key: state.tried(key, elapsed, False, began_at))
        except BaseException:
            state.tried(key, time.monotonic() - began, True, began_at)
            print(f"reproduce: interrupted during `{job.line()}`; the {len(runs)} finished command(s) are kept: "
                  f"`make reproduce` again resumes", file=sys.stderr, flush=True)
            raise
        if failure:
            state.tried(key, seconds, True, began_at)
            failures[job] = failure
            print(f"[{index}/{len(todo)}] `{job.line()}` failed ({failure}) after {duration(seconds)}: its claims "
                  f"are not measured; the next command runs", flush=True)
            continue
        tries = earlier_try["tries"] + 1
        total = earlier_try["seconds"] + seconds
        runs[job] = state.runs[key] = {"run_id": run_id, "seconds": total, "tries": tries, "line": job.line(),
                                       "started": earlier_try.get("started") or began_at, "finished": _now(),
                                       "machine": here}
        state.unfinished.pop(key, None)
        state.save()
        print(f"[{index}/{len(todo)}] `{job.line()}` done in {duration(seconds)}"
              + (f" ({duration(total)} over its {tries} tries)" if tries > 1 else "")
              + f" (MLflow run {run_id}); about {duration(left(index))} left", flush=True)
    measured = measure(chosen, runs, uri)
    table, within, outside, missing = results_table(chosen, measured)
    verdict = (f"{within} of {len(chosen)} claim(s) within tolerance, {outside} outside, {missing} not measured"
               + (" (" + "; ".join(f"`{j.line()}`: {why}" for j, why in failures.items()) + ")" if failures else ""))
    print("\n" + table + "\n" + verdict, flush=True)
    if args.into:
        summary = None if only else (
            f"_Written by `make reproduce`, never by hand: its last full call, {provenance(todo, runs)}. "
            f"{verdict}._\n\n{table}")
        write_docs(args.into, runs, uri, summary)
    return 0 if outside == missing == 0 else 1


def restate_claims(path: str, claims: list[Claim], runs: dict[Job, dict], uri: str) -> int:
    """Runs nothing: writes the values the finished commands measured into the claims file, in
    place of the stated ones (as many decimals), and lists what changed and where the text states
    it, for the person who then edits that text (tests/test_claims.py names any place missed)."""
    if not runs:
        raise ClaimsError(f"{path}: no command of these claims has finished in MLflow {uri}: run `make reproduce` "
                          f"first, then restate what it measured")
    measured = measure(claims, runs, uri)
    changed = {claim: stated_like(claim.stated, value) for claim, value in measured.items()
               if value is not None and stated_like(claim.stated, value) != claim.stated}
    Path(path).write_text(restate(path, {claim.line: value for claim, value in changed.items()}))
    for claim, value in changed.items():
        print(f"{path}:{claim.line}: {claim.figure}: {claim.stated} -> {value} (stated in {claim.where})")
    kept = sum(1 for value in measured.values() if value is None)
    print(f"reproduce: {len(changed)} claim(s) restated, {len(measured) - len(changed) - kept} unchanged, {kept} not "
          f"measured and kept as stated; write the new values where each is stated (tests/test_claims.py names every "
          f"place that still states an old one)", flush=True)
    return 0


def provenance(todo: list[Job], runs: dict[Job, dict]) -> str:
    """When and where the finished commands ran: one machine, or each machine with its commands (a
    call resumed elsewhere), and the commands whose wall sums several tries."""
    done = [job for job in todo if job in runs]
    if not done:
        return "no command finished"
    starts = [runs[j].get("started") or runs[j]["finished"] for j in done]
    when = f"its commands run between {min(starts)[:16].replace('T', ' ')} and " \
           f"{max(runs[j]['finished'] for j in done)[:16].replace('T', ' ')} UTC"
    machines: dict[str, list[str]] = {}
    for job in done:
        machines.setdefault(runs[job].get("machine") or "a machine not recorded (an older call)", []).append(
            f"`{job.line()}`")
    if len(machines) == 1:
        where = f"on {next(iter(machines))}"
    else:
        where = "on " + str(len(machines)) + " machines: " + "; ".join(
            f"{name} ({', '.join(lines)})" for name, lines in machines.items())
    several = [f"`{j.line()}` ({runs[j]['tries']} tries)" for j in done if runs[j].get("tries", 1) > 1]
    return when + ", " + where + (f"; walls summed over tries: {', '.join(several)}" if several else "")
