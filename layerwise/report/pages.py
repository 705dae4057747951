"""The Markdown report of one tracked run: a grid (each cell's mean ± std over seeds, each row's
paired difference from its control with a 95 % interval, every cell), a sweep (the trials table,
the best trial, the final run) or a single run (its headline metrics and its stages).

No tracking here: the runs come in as plain RunInfo records (tasks/experiments.py reads them from
an MLflow store). A Page keeps every number it states by name (`values`): what docs/claims.csv
names in its metric column, and what the tests check against the runs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

from layerwise.report.tables import paired_frame, results_frame, summary_frame, summary_markdown

# the parent metrics a single run's page lists first, in this order (the rest follow by name)
HEADLINE = ("test_error", "test_accuracy", "kept_val_accuracy", "test_sq_error", "test_sq_error_stacked",
            "pca_test_sq_error", "wall_seconds")
# parent artifacts a page links to when the run has them
FIGURES = ("ablation.png",)
FIGURE_FOLDER = "figures"


@dataclass
class RunInfo:
    """One MLflow run as the report needs it (metrics: each key's latest value)."""
    run_id: str
    name: str
    status: str
    start_ms: int
    end_ms: Optional[int]
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> Optional[float]:
        return None if self.end_ms is None else (self.end_ms - self.start_ms) / 1000

    @property
    def started(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.start_ms / 1000))

    @property
    def reused(self) -> bool:
        return self.tags.get("layerwise.reused") == "true"


@dataclass
class Page:
    title: str
    source: str  # where the numbers come from: the run, its status and date
    body: str    # the tables (what a docs section pastes)
    values: dict[str, float]
    run_id: str = ""  # the parent run the page reports
    figures: list[str] = field(default_factory=list)  # artifact paths of the parent run, linked from the page

    def markdown(self) -> str:
        links = "".join(f"\n![{path}]({path})\n" for path in self.figures)
        return f"# {self.title}\n\n{self.source}\n\n{self.body.rstrip()}\n{links}"


def number(name: str, value: Optional[float]) -> str:
    """A value as the page writes it: accuracies and precisions to 4 decimals, seconds whole,
    errors and losses to 2."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if name.endswith(("seconds", "minutes_total")) or name in ("trial", "n", "best_epoch"):
        return f"{value:.0f}"
    if "accuracy" in name or "precision" in name or name.endswith("_frac"):
        return f"{value:.4f}"
    if name.endswith("minutes"):
        return f"{value:.1f}"
    return f"{value:.2f}"


def _seconds(run: RunInfo) -> str:
    wall = run.metrics.get("wall_seconds", run.seconds)
    return "" if wall is None else f", wall {wall:.0f} s"


def source_line(experiment: str, run: RunInfo) -> str:
    status = "written as it ended" if run.status == "RUNNING" else run.status  # a pipeline's own report
    return (f"Experiment `{experiment}`, MLflow run `{run.run_id}` ({run.name}): {status}, started "
            f"{run.started}{_seconds(run)}.")


def _pick(run: RunInfo, names) -> list[str]:
    return [name for name in names if name in run.metrics]


# --- a grid ---------------------------------------------------------------------------------------

def cell_rows(cells: list[RunInfo]) -> list[dict]:
    """Each cell run as a row of tables.results_frame (tags layerwise.labels/seed/method)."""
    rows = []
    for cell in cells:
        rows.append({"labels": int(cell.tags["layerwise.labels"]), "seed": int(cell.tags["layerwise.seed"]),
                     "init": cell.tags.get("layerwise.method", cell.tags.get("layerwise.init")),
                     "test_error": cell.metrics.get("test_error"), "test_accuracy": cell.metrics.get("test_accuracy"),
                     "best_epoch": cell.metrics.get("best_epoch"), "train_seconds": cell.metrics.get("train_seconds"),
                     "run_id": cell.run_id, "trained_by": cell.tags.get("layerwise.cell_run_id", cell.run_id)})
    return rows


def grid_page(experiment: str, parent: RunInfo, cells: list[RunInfo]) -> Page:
    results = results_frame(cell_rows(cells))
    summary, paired = summary_frame(results), paired_frame(results)
    test = parent.params.get("data.found.test")
    test_set = f"the {int(test):,} test images" if test and test.isdigit() else "the test images"
    mnist = parent.params.get("data.source", "mnist") == "mnist"
    values: dict[str, float] = {}
    methods = [c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")]
    for _, row in summary.iterrows():
        labels = int(row["labels"])
        for m in methods:
            for stat in ("mean", "std", "count"):
                values[f"{'n' if stat == 'count' else stat}/{labels}/{m}"] = float(row[f"{m}_{stat}"])
            gain = "gain" if m == "pretrained" else f"gain_{m}"
            if gain in summary.columns:
                values[f"gain/{labels}/{m}"] = float(row[gain])
    for _, row in paired.iterrows():
        key = f"paired/{int(row['labels'])}/{row['method']}-vs-{row['control']}"
        values[key], values[key + "/ci_low"], values[key + "/ci_high"] = (
            float(row["mean_diff"]), float(row["ci_low"]), float(row["ci_high"]))
    seeds = sorted(results["seed"].unique())
    lines = [f"Every cell (test error %, seeds {' / '.join(map(str, seeds))}):", "",
             "| labels | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for labels, block in results.groupby("labels"):
        cells_text = []
        for m in methods:
            by_seed = dict(zip(block[block["init"] == m]["seed"], block[block["init"] == m]["test_error"]))
            for seed, error in by_seed.items():
                values[f"cell/{labels}/{m}/{seed}"] = float(error)
            cells_text.append(" / ".join(number("test_error", by_seed.get(seed)) for seed in seeds))
        lines.append(f"| {labels} | " + " | ".join(cells_text) + " |")
    reused = sum(row.run_id != row.trained_by for row in results.itertuples())
    values["cells"], values["cells_reused"] = float(len(results)), float(reused)
    body = (summary_markdown(summary, "", test_set, anchors=mnist, paired=paired) + "\n" + "\n".join(lines)
            + f"\n\n{len(results)} cells, {reused} of them reused from earlier runs (linked to the run that "
              "trained them).\n")
    return Page(f"{experiment}: a grid of {len(results)} fine-tunes", source_line(experiment, parent), body,
                values, parent.run_id)


# --- a sweep --------------------------------------------------------------------------------------

def trial_state(trial: RunInfo) -> str:
    state = trial.tags.get("layerwise.trial_state")
    if state:
        return state
    return {"KILLED": "INTERRUPTED", "RUNNING": "RUNNING"}.get(trial.status, trial.status)


def sweep_page(experiment: str, parent: RunInfo, trials: list[RunInfo], final: Optional[RunInfo]) -> Page:
    objective = parent.params.get("sweep.objective", "val_accuracy")
    maximise = objective != "val_sq_error"
    keys = sorted({key.removeprefix("trial.") for t in trials for key in t.params if key.startswith("trial.")})
    trials = sorted(trials, key=lambda t: (int(t.tags.get("layerwise.trial", -1)), t.start_ms))
    values: dict[str, float] = {}
    digits = 4 if maximise else 3
    header = ["trial", "state", f"{objective} (validation)", *keys, "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    counts: dict[str, int] = {}
    for t in trials:
        n, state = int(t.tags.get("layerwise.trial", -1)), trial_state(t)
        counts[state] = counts.get(state, 0) + 1
        value = t.metrics.get(objective)
        if value is not None and state == "COMPLETE":
            values[f"trial/{n}/{objective}"] = value
        cells = [str(n), state.lower(), "–" if value is None else f"{value:.{digits}f}"]
        for key in keys:
            text = t.params.get(f"trial.{key}", "–")
            try:
                values[f"trial/{n}/{key}"] = float(text)
                cells.append(f"{float(text):.4g}")
            except ValueError:
                cells.append(text)
        if t.seconds is not None:
            values[f"trial/{n}/minutes"] = t.seconds / 60
        cells.append("–" if t.seconds is None else f"{t.seconds / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    complete = [t for t in trials if trial_state(t) == "COMPLETE" and objective in t.metrics]
    study = parent.tags.get("layerwise.sweep_study", "?")
    text = (f"Study `{study}`: {len(trials)} trial run(s) ("
            + ", ".join(f"{count} {state.lower()}" for state, count in sorted(counts.items()))
            + f"), judged on {objective} (validation, {'maximised' if maximise else 'minimised'}).\n\n"
            + "\n".join(lines) + "\n")
    if complete:
        best = (max if maximise else min)(complete, key=lambda t: t.metrics[objective])
        n = int(best.tags["layerwise.trial"])
        values["best/trial"], values[f"best/{objective}"] = float(n), best.metrics[objective]
        chosen = ", ".join(f"`{key}` = {best.params[f'trial.{key}']}" for key in keys if f"trial.{key}" in best.params)
        text += f"\n**Best**: trial {n}, {objective} {best.metrics[objective]:.{digits}f}: {chosen}.\n"
    else:
        text += "\nNo trial has finished.\n"
    if final is not None:
        shown = _pick(final, HEADLINE) + sorted(k for k in final.metrics if k.startswith("precision_at_"))
        for key in shown:
            values[f"final/{key}"] = final.metrics[key]
        text += (f"\n**Final run** (the best configuration, its test split read once): MLflow run `{final.run_id}`, "
                 f"{final.status}: " + ", ".join(f"{key} {number(key, final.metrics[key])}" for key in shown) + ".\n")
    return Page(f"{experiment}: sweep, study {study}", source_line(experiment, parent), text, values, parent.run_id)


# --- a single run ---------------------------------------------------------------------------------

def single_page(experiment: str, parent: RunInfo, children: list[RunInfo]) -> Page:
    names = _pick(parent, HEADLINE) + sorted(k for k in parent.metrics if k not in HEADLINE
                                             and not k.startswith("system/"))
    values = {name: parent.metrics[name] for name in names}
    lines = ["| metric | value |", "|---|---|"] + [f"| {name} | {number(name, values[name])} |" for name in names]
    stages = ["| stage | run | trained | seconds | its last metrics |", "|---|---|---|---|---|"]
    for child in sorted(children, key=lambda c: c.start_ms):
        stage = child.tags.get("layerwise.stage", "?")
        shown = {k: v for k, v in sorted(child.metrics.items()) if not k.startswith("system/")}
        for key, value in shown.items():
            values[f"stage/{stage}/{key}"] = value
        if child.seconds is not None:
            values[f"stage/{stage}/seconds"] = child.seconds
        trained = "reused" if child.reused else "here"
        stages.append(f"| {stage} | {child.name} | {trained} | {number('seconds', child.seconds)} | "
                      + ", ".join(f"{key} {number(key, value)}" for key, value in shown.items()) + " |")
    body = "\n".join(lines) + "\n\nIts stages, in the order they ran:\n\n" + "\n".join(stages) + "\n"
    kind = "deep autoencoder" if any(k.startswith("unroll.") for k in parent.params) else "fine-tune"
    return Page(f"{experiment}: {kind}", source_line(experiment, parent), body, values, parent.run_id)
