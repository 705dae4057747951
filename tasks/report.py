"""Results as reports: an ablation's results.csv, paired.csv, summary.md and ablation.png on the
parent run, the same summary as a Prefect table artifact and per-cell means as parent metrics; and
at the end of every pipeline or sweep, its report (tasks/experiments.py's page) as report.md on the
parent run and as a Prefect markdown artifact of the flow run."""
from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from layerwise.config import DataConfig
from layerwise.report.tables import paired_frame, plot_ablation, results_frame, summary_frame, summary_markdown
from tasks import tracking
from tasks.experiments import page_of_run
from tasks.logs import run_logger

REPORT_FILE = "report.md"


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


def artifact_key(pipeline: str, kind: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in f"{pipeline}-{kind}".lower())


@task(name="publish-report")
def publish_report(parent_run_id: str, pipeline: str) -> str:
    """The parent run's report, read back from the store as `layerwise report` reads it: logged as
    report.md on the run (its figure links resolve there) and as the flow run's markdown artifact.
    A report that cannot be written is a warning: the run's results are in the store already."""
    try:
        page = page_of_run(parent_run_id)
        markdown = page.markdown()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / REPORT_FILE
            path.write_text(markdown)
            tracking.client().log_artifact(parent_run_id, str(path))
        create_markdown_artifact(markdown=markdown, key=artifact_key(pipeline, "report"),
                                 description=f"{pipeline}: the report of MLflow run {parent_run_id}")
    except Exception as exc:  # noqa: BLE001 - the report is a view of results already stored
        run_logger().warning(f"the report of run {parent_run_id} was not written: {type(exc).__name__}: {exc}")
        return ""
    return markdown
