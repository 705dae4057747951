"""The parent MLflow run of one pipeline execution."""
from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
import tempfile
from pathlib import Path
from typing import Iterator

import yaml
from mlflow.entities import Metric
from prefect import task

from layerwise.config import PipelineConfig, cells, flatten
from layerwise.paths import work_root
from tasks import tracking
from tasks.logs import run_logger


NOTE_TAG = "mlflow.note.content"  # the run page's description (markdown)


def run_title(pipeline: str, cfg: PipelineConfig) -> str:
    """What the run is, as the runs table shows it: a fine-tune, a grid (its axes), an unroll."""
    if cfg.unroll:
        title = f"{pipeline} · deep autoencoder {cfg.shape_text()} · seed {cfg.seed}"
        return title + (f" · retrieval k={cfg.retrieval.k}" if cfg.retrieval else "")
    if cfg.ablation:
        grid = cfg.ablation
        labels = [str(n) for n in grid.labels] + [f"{f:g} of" for f in grid.label_fractions]
        methods = ([*grid.variants] if grid.variants else []) + \
            [i for i in grid.inits if not (grid.variants and i == "pretrained")]
        kind = "variant grid" if grid.variants else "grid"
        return (f"{pipeline} · {kind} {'/'.join(labels)} labels × {len(grid.seeds)} seed(s) × {'/'.join(methods)} "
                f"({len(cells(cfg))} fine-tunes)")
    ft = cfg.finetune
    labels = "all labels" if cfg.n_labels() == cfg.data.n_train else f"{cfg.n_labels()} labels"
    start = ft.init + (f"+{ft.unlabelled.objective}" if ft.unlabelled else "")
    return f"{pipeline} · {cfg.shape_text()} · {start} · {labels} · seed {ft.seed}"


def run_note(pipeline: str, cfg: PipelineConfig, outcome, wall_seconds: float) -> str:
    """The parent's description (MLflow's `mlflow.note.content`, shown on the run page): what ran,
    on what data, and what came out (an ablation's summary table too)."""
    details = outcome.details() if hasattr(outcome, "details") else ""
    return (f"**{pipeline}**: {cfg.description or run_title(pipeline, cfg)}\n\n"
            f"- stack {cfg.shape_text()}, pretrained greedily on {cfg.data.describe()}\n"
            f"- result: {outcome.headline()}\n- wall time {wall_seconds:.0f} s\n" + (f"\n{details.strip()}\n" if details else ""))


IN_USE = ".in-use"  # a scratch folder's lock file, held by the process working in it


@contextlib.contextmanager
def scratch_in_use(folder: Path) -> Iterator[None]:
    """Marks FOLDER as in use by this process (a shared lock on FOLDER/.in-use, which the kernel
    drops when the process dies): remove_scratch leaves it alone. A sweep's workers name their
    folders after the parent run they share; one of them dead must not take the others' with it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / IN_USE, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


def _in_use(folder: Path) -> bool:
    try:
        with open(folder / IN_USE) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def remove_scratch(run_ids: list[str]) -> None:
    """The per-run scratch folders (codes, splits) that killed runs could not clean up (not one a
    live process still works in: scratch_in_use)."""
    for run_id in run_ids:
        for folder in (work_root() / "runs").glob(f"{run_id}-*"):
            if not _in_use(folder):
                shutil.rmtree(folder, ignore_errors=True)


def experiment_for(mlf, pipeline: str) -> str:
    """The pipeline's experiment (created if new), after ending KILLED the runs a dead process left
    RUNNING there and removing their scratch folders."""
    experiment_id = tracking.ensure_experiment(mlf, pipeline)
    stale = tracking.mark_stale_runs(mlf, experiment_id)
    if stale:
        run_logger().warning(f"marked {len(stale)} run(s) KILLED that a dead process had left RUNNING: "
                             f"{', '.join(stale)}")
        remove_scratch(stale)
    return experiment_id


@task(name="open-pipeline-run", retries=2, retry_delay_seconds=2)
def open_pipeline_run(pipeline: str, cfg: PipelineConfig, flow_run_id: str | None = None,
                      device: str = "cpu", parent_of: str | None = None,
                      tags: dict[str, str] | None = None, title_suffix: str = "") -> dict[str, str]:
    """Creates the experiment (if new) and the parent run (nested under parent_of when given, with
    extra tags); logs the resolved config as YAML, and the device it computes on (as resolved here:
    'cuda:0 (NVIDIA H100 80GB HBM3)')."""
    mlf = tracking.client()
    experiment_id = experiment_for(mlf, pipeline)
    tags = {tracking.PIPELINE_TAG: pipeline, tracking.DEVICE_TAG: device, **(tags or {})}
    if cfg.finetune:
        tags["layerwise.init"] = cfg.finetune.init
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    run_id = tracking.start_run(mlf, experiment_id, run_title(pipeline, cfg) + title_suffix, tags, parent_of)
    with tracking.run_status(mlf, run_id, finish=False), tempfile.TemporaryDirectory() as tmp:
        tracking.log_params(mlf, run_id, {**flatten(cfg.model_dump(exclude={"sweep"})), "resolved_device": device})
        path = Path(tmp) / "pipeline.yaml"
        path.write_text(yaml.safe_dump({"pipelines": {pipeline: cfg.model_dump(exclude={"sweep"})}}, sort_keys=False))
        mlf.log_artifact(run_id, str(path))
    return {"run_id": run_id, "experiment_id": experiment_id}


@task(name="record-results", retries=2, retry_delay_seconds=2)
def record_results(run_id: str, metrics: dict[str, float], note: str = "") -> None:
    """The parent's metrics and (note) its description."""
    mlf = tracking.client()
    tracking.log_metrics(mlf, run_id, metrics)
    if note:
        mlf.set_tag(run_id, NOTE_TAG, note)


@task(name="record-datasets", retries=2, retry_delay_seconds=2)
def record_datasets(run_id: str, data, contexts: tuple[str, ...] = ("training", "validation", "test",
                                                                     "unlabelled pool")) -> None:
    """The run's splits as its MLflow dataset inputs (data: tasks.data.DataFiles)."""
    from tasks.datasets import log_datasets

    log_datasets(tracking.client(), run_id, data.source_uri, data.datasets(*contexts))


def _monitors() -> list:
    """MLflow's own samplers: CPU and memory, disk, network, and NVIDIA GPUs where their library is."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())
    except Exception:  # noqa: BLE001 - no NVIDIA library or no GPU: no GPU metrics
        pass
    return monitors


@contextlib.contextmanager
def system_metrics(run_id: str, every: float) -> Iterator[None]:
    """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, disk, network; GPU where
    NVIDIA's library is present) sampled every `every` seconds by a thread, and written onto the
    run when the block ends (every = 0: off). The thread only samples: a second writer to a sqlite
    store during the run (MLflow's own monitor writes as it samples) was seen to leave the store
    locked when an interrupt ended the run, so the runs could not be marked KILLED."""
    if not every:
        yield
        return
    import threading

    monitors, samples, stop = _monitors(), [], threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            metrics = {}
            for monitor in monitors:
                monitor.collect_metrics()
                metrics.update(monitor.aggregate_metrics())
                monitor.clear_metrics()
            samples.append((int(time.time() * 1000), metrics))

    sampler = threading.Thread(target=sample, name="layerwise-system-metrics", daemon=True)
    sampler.start()

    def write() -> None:
        stop.set()
        sampler.join(timeout=5)
        batch = [Metric(f"system/{key}", float(value), stamp, step)
                 for step, (stamp, metrics) in enumerate(list(samples)) for key, value in metrics.items()]
        for start in range(0, len(batch), 1000):
            tracking.client().log_batch(run_id, metrics=batch[start:start + 1000])
    try:
        yield
    except Exception:
        try:  # a failed run keeps its samples, but their write must not replace the run's own error
            write()
        except Exception as exc:  # noqa: BLE001
            run_logger().warning(f"system metrics not written: {exc}")
        raise
    except BaseException:
        stop.set()  # interrupted: nothing more is written, the runs must end KILLED first
        raise
    write()
