"""The ablation's results: results.csv, summary.md and ablation.png on the parent run, the same
summary as a Prefect table artifact, and per-cell means as parent metrics."""
from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from layerwise.config import DataConfig
from layerwise.report.tables import paired_frame, plot_ablation, results_frame, summary_frame, summary_markdown
from tasks import tracking


@task(name="summarize-ablation", retries=1, retry_delay_seconds=2)
def summarize_ablation(parent_run_id: str, pipeline: str, rows: list[dict], data: DataConfig) -> dict:
    results = results_frame(rows)
    summary = summary_frame(results)
    paired = paired_frame(results)
    title = f"{pipeline}: test error against labelled images"
    markdown = summary_markdown(summary, title, f"the {data.found.test:,} test images of {data.describe()}",
                                anchors=data.is_mnist, paired=paired)
    mlf = tracking.client()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results.to_csv(folder / "results.csv", index=False)
        paired.to_csv(folder / "paired.csv", index=False)
        (folder / "summary.md").write_text(markdown)
        plot_ablation(summary, folder / "ablation.png", title, anchors=data.is_mnist, results=results)
        for name in ("results.csv", "paired.csv", "summary.md", "ablation.png"):
            mlf.log_artifact(parent_run_id, str(folder / name))
    metrics = {}
    for _, row in summary.iterrows():
        labels = int(row["labels"])
        for column in summary.columns:
            if column.endswith("_mean"):
                metrics[f"mean_test_error/{labels}/{column.removesuffix('_mean')}"] = row[column]
        for column in summary.columns:
            if column.startswith("gain"):
                metrics[f"{column}/{labels}"] = row[column]
    # MLflow names take no '+': pretrained+pseudo_label is logged as pretrained_plus_pseudo_label
    tracking.log_metrics(mlf, parent_run_id, {key.replace("+", "_plus_"): value for key, value in metrics.items()})
    for _, row in paired.iterrows():  # MLflow names take no '+' nor spaces
        tracking.log_metrics(mlf, parent_run_id, {
            f"paired_diff/{int(row['labels'])}/{row['method']}-vs-{row['control']}".replace("+", "_plus_"):
            row["mean_diff"]})
    table = summary.round(3).to_dict(orient="records")
    create_table_artifact(table=table, key=f"{pipeline.lower()}-summary".replace("_", "-"),
                          description=markdown)
    return {"summary": table, "markdown": markdown}
