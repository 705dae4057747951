"""Every number of a `layerwise report` page checked against the MLflow runs it came from, computed
here again from the runs (not through the report's code): the tests of report pages share these."""
from __future__ import annotations

import re
import statistics
import time

from scipy import stats

NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def close(text: str, expected: float) -> bool:
    """text is expected rounded to the digits text shows."""
    text = text.replace("−", "-")
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    half = 0.5 * 10 ** (int(exponent or 0) - decimals)
    return abs(float(text) - expected) <= half * (1 + 1e-6) + 1e-12


def table(markdown: str, first_header: str) -> list[list[str]]:
    """The cells of the table whose header row starts with first_header (separator row left out)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def check_source(text: str, parent) -> str:
    """The page's source line: its run, start time and wall time."""
    line = next(line for line in text.splitlines() if line.startswith("Experiment `"))
    assert f"MLflow run `{parent.info.run_id}`" in line
    assert time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(parent.info.start_time / 1000)) in line
    wall = parent.data.metrics.get("wall_seconds", (parent.info.end_time - parent.info.start_time) / 1000)
    assert close(re.search(r"wall (\d+) s", line).group(1), wall), line
    return line


def only_checked_numbers(text: str, checked: set[str]) -> None:
    """No line with a digit is left that a check did not read."""
    left = [line for line in text.splitlines() if re.search(r"\d", line) and line not in checked
            and not line.startswith("![")]
    assert not left, f"lines with numbers no check read: {left}"


def check_grid(text: str, client, parent) -> None:
    cells = [r for r in client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
             if r.data.tags.get("layerwise.stage") == "finetune"]
    errors: dict[tuple[int, str], dict[int, float]] = {}
    for run in cells:
        key = (int(run.data.tags["layerwise.labels"]), run.data.tags["layerwise.method"])
        errors.setdefault(key, {})[int(run.data.tags["layerwise.seed"])] = run.data.metrics["test_error"]
    methods = list(dict.fromkeys(m for _, m in sorted(errors, key=lambda k: k[1] == "scratch")))
    checked = {check_source(text, parent)}

    summary = table(text, "labels")  # the first: mean ± std (n) per method, then the gains
    assert len(summary) == len({labels for labels, _ in errors})
    for row in summary:
        labels = int(row[0])
        for method, cell in zip(methods, row[1:]):
            values = list(errors[(labels, method)].values())
            mean, std, n = re.fullmatch(r"(\S+) ± (\S+) \(n=(\d+)\)", cell).groups()
            assert close(mean, statistics.mean(values)) and close(std, statistics.stdev(values)), (cell, values)
            assert int(n) == len(values)
        for method, cell in zip([m for m in methods if m != "scratch"], row[1 + len(methods):]):
            gain = statistics.mean(errors[(labels, method)].values()) - statistics.mean(errors[(labels, "scratch")].values())
            assert close(cell, gain), (cell, gain)
    checked |= {line for line in text.splitlines() if line.startswith("| ") and "(n=" in line}

    paired = table(text, "labels | row − control")
    assert paired, "no paired differences"
    for labels, pair, mean, interval, seeds in paired:
        method, control = pair.split(" − ")
        a, b = errors[(int(labels), method)], errors[(int(labels), control)]
        diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
        half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
        low, high = NUMBER.findall(interval)
        assert close(mean, statistics.mean(diffs)) and int(seeds) == len(diffs)
        assert close(low, statistics.mean(diffs) - half) and close(high, statistics.mean(diffs) + half)
        checked.add(f"| {labels} | {pair} | {mean} | {interval} | {seeds} |")

    every = table(text, "labels | " + " | ".join(methods))
    seeds = sorted({s for by_seed in errors.values() for s in by_seed})
    for row in every:
        for method, cell in zip(methods, row[1:]):
            shown = cell.split(" / ")
            assert len(shown) == len(seeds)
            for seed, value in zip(seeds, shown):
                assert close(value, errors[(int(row[0]), method)][seed]), (row, seed)
        checked.add("| " + " | ".join(row) + " |")
    reused = sum(r.data.tags.get("layerwise.reused") == "true" for r in cells)
    counts = next(line for line in text.splitlines() if line.endswith("reused from earlier runs (linked to the "
                                                                        "run that trained them)."))
    assert counts.startswith(f"{len(cells)} cells, {reused} of them")
    checked.add(counts)
    title = text.splitlines()[0]
    assert title == f"# {client.get_experiment(parent.info.experiment_id).name}: a grid of {len(cells)} fine-tunes", title
    checked.add(title)
    checked |= {line for line in text.splitlines() if line.startswith(("Every cell (test error %, seeds",
                                                                       "Paired by seed", "Error on the "))}
    anchors = next(line for line in text.splitlines() if line.startswith("Error on the "))
    from layerwise.report.anchors import FEW_LABEL_ERRORS  # published numbers, not the runs'

    for name, published in FEW_LABEL_ERRORS.items():
        assert f"{name} " + "/".join(f"{v:g}" for v in published.values()) in anchors
    assert f"{int(parent.data.params['data.found.test']):,} test images" in anchors
    only_checked_numbers(text, checked)


def check_single(text: str, client, parent) -> None:
    checked = {check_source(text, parent)}
    metrics = {k: v for k, v in parent.data.metrics.items() if not k.startswith("system/")}
    rows = table(text, "metric")
    assert {name for name, _ in rows} == set(metrics)
    for name, value in rows:
        assert close(value, metrics[name]), (name, value, metrics[name])
        checked.add(f"| {name} | {value} |")
    children = {r.data.tags["layerwise.stage"]: r for r in
                client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    stages = table(text, "stage")
    assert sorted(row[0] for row in stages) == sorted(children)
    for stage, name, trained, seconds, shown in stages:
        run = children[stage]
        assert name == run.info.run_name and trained == ("reused" if run.data.tags.get("layerwise.reused") == "true"
                                                         else "here")
        assert close(seconds, (run.info.end_time - run.info.start_time) / 1000)
        pairs = [pair.rsplit(" ", 1) for pair in shown.split(", ")] if shown else []
        assert {key for key, _ in pairs} == {k for k in run.data.metrics if not k.startswith("system/")}
        for key, value in pairs:
            assert close(value, run.data.metrics[key]), (stage, key, value)
        checked.add(f"| {stage} | {name} | {trained} | {seconds} | {shown} |")
    only_checked_numbers(text, checked)


def check_sweep(text: str, client, parent) -> None:
    checked = {check_source(text, parent)}
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = {int(r.data.tags["layerwise.trial"]): r for r in runs if r.data.tags.get("layerwise.kind") == "trial"}
    objective = parent.data.params["sweep.objective"]
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| trial |"))
    keys = [cell.strip() for cell in header.strip("|").split("|")][3:-1]
    assert lines[0] == f"# {client.get_experiment(parent.info.experiment_id).name}: sweep, study " \
        f"{parent.data.tags['layerwise.sweep_study']}", lines[0]
    assert header == "| " + " | ".join(["trial", "state", f"{objective} (validation)", *keys, "minutes"]) + " |"
    assert set(keys) == {k.removeprefix("trial.") for r in trials.values() for k in r.data.params if k.startswith("trial.")}
    checked |= {lines[0], header}
    rows = table(text, "trial")
    assert sorted(int(row[0]) for row in rows) == sorted(trials)
    for row in rows:
        run = trials[int(row[0])]
        state = run.data.tags.get("layerwise.trial_state") or {"KILLED": "INTERRUPTED"}.get(run.info.status)
        assert row[1] == state.lower()
        if objective in run.data.metrics:
            assert close(row[2], run.data.metrics[objective])
        else:
            assert row[2] == "–"
        for key, cell in zip(keys, row[3:-1]):
            assert close(cell, float(run.data.params[f"trial.{key}"])), (key, cell)
        assert close(row[-1], (run.info.end_time - run.info.start_time) / 60000)
        checked.add("| " + " | ".join(row) + " |")
    complete = {n: r.data.metrics[objective] for n, r in trials.items()
                if r.data.tags.get("layerwise.trial_state") == "COMPLETE"}
    best = (max if objective != "val_sq_error" else min)(complete, key=complete.get)
    best_line = next(line for line in lines if line.startswith("**Best**"))
    shown = re.match(rf"\*\*Best\*\*: trial (\d+), {objective} (\S+):", best_line).groups()
    assert int(shown[0]) == best and close(shown[1], complete[best])
    for key in keys:
        assert f"`{key}` = {trials[best].data.params[f'trial.{key}']}" in best_line
    assert parent.data.metrics[f"best_{objective}"] == complete[best]  # what the sweep itself chose
    [final] = [r for r in runs if r.data.tags.get("layerwise.sweep_final") == "true"]
    final_line = next(line for line in lines if line.startswith("**Final run**"))
    assert f"MLflow run `{final.info.run_id}`" in final_line
    pairs = re.findall(r"(\w+) (\d+(?:\.\d+)?)(?=,|\.$)", final_line.split(": ", 1)[1])
    assert {key for key, _ in pairs} >= {"test_error", "test_accuracy", "wall_seconds"}
    for key, value in pairs:
        assert close(value, final.data.metrics[key]), (key, value)
    checked |= {best_line, final_line, next(line for line in lines if line.startswith("Study `"))}
    study_line = next(line for line in lines if line.startswith("Study `"))
    states = [row[1] for row in rows]
    assert f"{len(trials)} trial run(s) (" + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) + ")" \
        in study_line, study_line
    only_checked_numbers(text, checked)
