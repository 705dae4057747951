"""Ablation results as tables and a figure (pandas + matplotlib; no tracking, no orchestration)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from layerwise.report.anchors import FEW_LABEL_ERRORS, SOURCE, UNLABELLED_ERRORS, UNLABELLED_SOURCE

COLUMNS = ["labels", "seed", "init", "test_error", "test_accuracy", "best_epoch", "train_seconds", "run_id",
           "trained_by"]


def results_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)[COLUMNS]
    return frame.sort_values(["labels", "init", "seed"]).reset_index(drop=True)


def gain_column(method: str) -> str:
    return "gain" if method == "pretrained" else f"gain_{method}"


def summary_frame(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of test error per label count and init (scratch, pretrained, or a pretraining
    variant's name), with each pretrained method's gain over scratch (negative = pretraining
    lowers the error)."""
    stats = results.groupby(["labels", "init"])["test_error"].agg(["mean", "std", "count"]).reset_index()
    wide = stats.pivot(index="labels", columns="init", values=["mean", "std", "count"])
    wide.columns = [f"{init}_{stat}" for stat, init in wide.columns]
    order = [m for m in dict.fromkeys(results["init"]) if m != "scratch"] + ["scratch"]
    wide = wide[[f"{m}_{stat}" for m in order for stat in ("mean", "std", "count") if f"{m}_{stat}" in wide]]
    if "scratch_mean" in wide.columns:
        for method in order[:-1]:
            wide[gain_column(method)] = wide[f"{method}_mean"] - wide["scratch_mean"]
    return wide.reset_index()


def controls(method: str, methods) -> list[str]:
    """What a row is compared with, seed by seed: an objective's row with the same start without it
    (+objective − plain); a pretrained row (or variant) with scratch; pretrained+objective also with
    scratch+objective (what pretraining adds under the objective)."""
    if "+" in method:
        start, objective = method.split("+", 1)
        pairs = [start]
        if start != "scratch" and f"scratch+{objective}" in methods:
            pairs.append(f"scratch+{objective}")
        return [c for c in pairs if c in methods]
    return ["scratch"] if method != "scratch" and "scratch" in methods else []


def paired_frame(results: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Each row's difference from its controls (row − control, test error points), paired by seed:
    mean over the seeds both have, and a `level` interval from Student's t over those differences
    (none from a single seed). Negative = the row has the lower error."""
    from scipy import stats

    methods = list(dict.fromkeys(results["init"]))
    by = results.pivot_table(index=["labels", "seed"], columns="init", values="test_error")
    rows = []
    for labels, block in by.groupby(level="labels"):
        for method in methods:
            for control in controls(method, methods):
                diffs = (block[method] - block[control]).dropna()
                n = len(diffs)
                mean = diffs.mean() if n else float("nan")
                half = (stats.t.ppf(0.5 + level / 2, n - 1) * diffs.std(ddof=1) / n ** 0.5) if n > 1 else float("nan")
                rows.append({"labels": labels, "method": method, "control": control, "n": n, "mean_diff": mean,
                             "ci_low": mean - half, "ci_high": mean + half})
    return pd.DataFrame(rows, columns=["labels", "method", "control", "n", "mean_diff", "ci_low", "ci_high"])


def paired_markdown(paired: pd.DataFrame, level: float = 0.95) -> str:
    if paired.empty:
        return ""
    lines = [f"Paired by seed, row − control (test error points; mean over seeds, {level:.0%} interval "
             "from Student's t; negative: the row errs less):", "",
             "| labels | row − control | mean | interval | seeds |", "|---|---|---|---|---|"]
    for _, r in paired.iterrows():
        interval = "–" if pd.isna(r["ci_low"]) else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        lines.append(f"| {int(r['labels'])} | {r['method']} − {r['control']} | {r['mean_diff']:+.2f} | "
                     f"{interval} | {int(r['n'])} |")
    return "\n".join(lines) + "\n"


def uses_unlabelled(methods) -> bool:
    """Whether a grid's methods include an unlabelled objective ('pretrained+pseudo_label')."""
    return any("+" in method for method in methods)


def reference_points(methods, anchors: bool) -> list[tuple[str, dict, str]]:
    """(name, {labels: error}, source) of the published points drawn beside a grid: the few-label
    compilation, and with an unlabelled objective in the grid the methods that use unlabelled data."""
    if not anchors:
        return []
    points = [(name, errors, SOURCE) for name, errors in FEW_LABEL_ERRORS.items()]
    if uses_unlabelled(methods):
        points += [(name, errors, UNLABELLED_SOURCE) for name, errors in UNLABELLED_ERRORS.items()]
    return points


def summary_markdown(summary: pd.DataFrame, title: str, test_set: str = "the official 10,000-image MNIST test set",
                     anchors: bool = True, paired: pd.DataFrame | None = None) -> str:
    """title: the heading (none when empty); anchors: add the published MNIST few-label errors (only
    where the data is MNIST); paired:
    paired_frame's differences, as a second table."""
    inits = [c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")]
    header = ["labels"] + [f"{init} error % (mean ± std, n)" for init in inits]
    gains = [init for init in inits if gain_column(init) in summary.columns]
    header += [f"gain {init} − scratch (points)" for init in gains]
    lines = ([f"## {title}", ""] if title else []) + ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [str(int(row["labels"]))]
        for init in inits:
            std = row[f"{init}_std"]
            cells.append(f"{row[f'{init}_mean']:.2f} ± {0.0 if pd.isna(std) else std:.2f} (n={int(row[f'{init}_count'])})")
        cells += [f"{row[gain_column(init)]:+.2f}" for init in gains]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Error on {test_set}."]
    if anchors:
        lines[-1] += (f" Published reference ({SOURCE}): "
                      + "; ".join(f"{name} " + "/".join(f"{v:g}" for v in errs.values())
                                  for name, errs in FEW_LABEL_ERRORS.items()) + " at 100/600/1000/3000 labels.")
    if anchors and uses_unlabelled(inits):
        lines[-1] += (" Using the unlabelled images too (" + UNLABELLED_SOURCE + "): "
                      + "; ".join(f"{name} " + ", ".join(f"{v:g} at {n}" for n, v in errs.items())
                                  for name, errs in UNLABELLED_ERRORS.items()) + ".")
    text = "\n".join(lines) + "\n"
    return text + ("\n" + paired_markdown(paired) if paired is not None and not paired.empty else "")


def plot_ablation(summary: pd.DataFrame, path: Path, title: str, anchors: bool = True,
                  results: pd.DataFrame | None = None) -> Path:
    """Mean ± std per method against the label count, with each seed's own point (results) beside
    it, and the published points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    methods = [c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")]
    styles = iter(["o-", "D-", "^-", "v-", "P-", "X-"])
    for init in methods:
        line = ax.errorbar(summary["labels"], summary[f"{init}_mean"], yerr=summary[f"{init}_std"].fillna(0),
                           fmt="s--" if init == "scratch" else next(styles), capsize=4, label=f"{init} (measured)")
        if results is not None:  # every seed's cell, in the method's colour
            seeds = results[results["init"] == init]
            ax.plot(seeds["labels"], seeds["test_error"], ".", color=line[0].get_color(), alpha=0.6,
                    markersize=5)
    markers = iter("v^Dxp*<>h")
    for name, errors, source in reference_points(methods, anchors):
        ax.plot(list(errors), list(errors.values()), next(markers),
                color="grey" if source == SOURCE else "tab:purple", alpha=0.7, linestyle="none",
                label=f"{name} [{source}]")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test error (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: no curve hidden
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
