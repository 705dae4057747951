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
                     anchors: bool = True) -> str:
    """anchors: add the published MNIST few-label errors (only where the data is MNIST)."""
    inits = [c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")]
    header = ["labels"] + [f"{init} error % (mean ± std, n)" for init in inits]
    gains = [init for init in inits if gain_column(init) in summary.columns]
    header += [f"gain {init} − scratch (points)" for init in gains]
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
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
    return "\n".join(lines) + "\n"


def plot_ablation(summary: pd.DataFrame, path: Path, title: str, anchors: bool = True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    methods = [c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")]
    styles = iter(["o-", "D-", "^-", "v-", "P-", "X-"])
    for init in methods:
        ax.errorbar(summary["labels"], summary[f"{init}_mean"], yerr=summary[f"{init}_std"].fillna(0),
                    fmt="s--" if init == "scratch" else next(styles), capsize=4, label=f"{init} (measured)")
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
