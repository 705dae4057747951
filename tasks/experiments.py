"""An experiment read back from any MLflow store (a sqlite file or a tracking server): its latest
finished parent run, what kind of run it is, and the runs under it, as the report's Page.

    page = read_page("label-ablation", "sqlite:////work/mlruns/mlflow.db")
    print(page.markdown())
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from mlflow.tracking import MlflowClient

from layerwise.errors import ReportError
from layerwise.report.pages import FIGURE_FOLDER, FIGURES, Page, RunInfo, grid_page, single_page, sweep_page
from tasks import tracking

MAX_RUNS = 50_000  # MLflow's own ceiling for one search


def open_store(uri: str) -> MlflowClient:
    """A client on uri that creates nothing: a sqlite file that does not exist, or a server that
    does not answer, is a ReportError naming the store."""
    db = tracking.sqlite_path(uri)
    if uri.startswith("sqlite:") and (db is None or not db.is_file()):
        raise ReportError(f"no MLflow store at {uri} (no such database file)")
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure: the store cannot be read
        first = (str(exc).splitlines() or [""])[0]
        raise ReportError(f"the MLflow store {uri} cannot be read ({type(exc).__name__}: {first[:200]})") from None
    return client


def info(run) -> RunInfo:
    return RunInfo(run.info.run_id, run.info.run_name or "", run.info.status, run.info.start_time, run.info.end_time,
                   dict(run.data.tags), dict(run.data.params), dict(run.data.metrics))


def children(client: MlflowClient, experiment_id: str, run_id: str, extra: str = "") -> list[RunInfo]:
    found = client.search_runs([experiment_id], f"tags.`{tracking.PARENT_TAG}` = '{run_id}'{extra}",
                               max_results=MAX_RUNS)
    return [info(run) for run in found]


def find_parent(client: MlflowClient, experiment: str, uri: str, run_id: Optional[str] = None,
                sweep: bool = False) -> tuple[str, RunInfo]:
    """(experiment id, parent run): run_id's, else the latest finished top-level run of the
    experiment (with sweep, the latest sweep's parent)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments(max_results=1000) if e.name != "Default")
        raise ReportError(f"no experiment '{experiment}' in the MLflow store {uri} (it has: {', '.join(names) or 'none'})")
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception:  # noqa: BLE001 - MLflow raises its own error for an unknown id
            raise ReportError(f"no run {run_id} in the MLflow store {uri}") from None
        if run.info.experiment_id != found.experiment_id:
            raise ReportError(f"run {run_id} is not in experiment '{experiment}' of the MLflow store {uri}")
        return found.experiment_id, info(run)
    kind = " and tags.`layerwise.kind` = 'sweep'" if sweep else ""
    runs = client.search_runs([found.experiment_id], f"attributes.status = 'FINISHED'{kind}",
                              order_by=["attributes.start_time DESC"], max_results=MAX_RUNS)
    top = [run for run in runs if tracking.PARENT_TAG not in run.data.tags]
    if not top:
        raise ReportError(f"experiment '{experiment}' in the MLflow store {uri} has no finished "
                          f"{'sweep' if sweep else 'run'} to report")
    return found.experiment_id, info(top[0])


def build_page(client: MlflowClient, experiment: str, experiment_id: str, parent: RunInfo) -> Page:
    """The page of a parent run: a sweep, a grid or a single run, by what the run is."""
    if parent.tags.get("layerwise.kind") == "sweep":
        trials = children(client, experiment_id, parent.run_id, " and tags.`layerwise.kind` = 'trial'")
        finals = children(client, experiment_id, parent.run_id, " and tags.`layerwise.sweep_final` = 'true'"
                                                                " and attributes.status = 'FINISHED'")
        final = max(finals, key=lambda r: r.start_ms) if finals else None
        page = sweep_page(experiment, parent, trials, final)
    elif any(key.startswith("ablation.") for key in parent.params):
        cells = [c for c in children(client, experiment_id, parent.run_id, " and tags.`layerwise.stage` = 'finetune'")
                 if "layerwise.labels" in c.tags]
        if not cells:
            raise ReportError(f"run {parent.run_id} of experiment '{experiment}' is a grid without cells")
        page = grid_page(experiment, parent, cells)
    else:
        page = single_page(experiment, parent, children(client, experiment_id, parent.run_id))
    page.figures = figures_of(client, parent.run_id)
    return page


def figures_of(client: MlflowClient, run_id: str) -> list[str]:
    """The parent's figures: ablation.png at its root, the images under figures/."""
    at_root = {a.path for a in client.list_artifacts(run_id)}
    images = [path for path in FIGURES if path in at_root]
    if FIGURE_FOLDER in at_root:
        images += sorted(a.path for a in client.list_artifacts(run_id, FIGURE_FOLDER) if a.path.endswith(".png"))
    return images


def read_page(experiment: str, uri: str, run_id: Optional[str] = None, sweep: bool = False) -> Page:
    client = open_store(uri)
    experiment_id, parent = find_parent(client, experiment, uri, run_id, sweep)
    return build_page(client, experiment, experiment_id, parent)


def page_of_run(run_id: str) -> Page:
    """The page of a run of this process's store (a pipeline's parent at its end)."""
    client = tracking.client()
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id).name
    return build_page(client, experiment, run.info.experiment_id, info(run))


def download_figures(uri: str, run_id: str, paths: list[str], folder: Path) -> None:
    """The page's figures beside it, where its links point."""
    client = MlflowClient(uri)
    for path in paths:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        client.download_artifacts(run_id, path, str((folder / path).parent))
