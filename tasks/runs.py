"""The parent MLflow run of one pipeline execution."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import psutil
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


# psutil reports the CPU use since its previous call: called here, when the flows are imported
# (the run's start-up), the first sample of a run reports the CPU use of that start-up, not a 0.
psutil.cpu_percent()


class _Samples:
    """The samples of one run, and how many of them are written (a lock: the sampling thread
    writes live while the run's own thread may write the rest at the end)."""

    def __init__(self, run_id: str) -> None:
        self.run_id, self.monitors = run_id, _monitors()
        self.taken: list[tuple[int, dict[str, float]]] = []
        self.written = 0
        self.lock = threading.Lock()
        self.failed = False

    def take(self) -> None:
        with self.lock:
            metrics = {}
            for monitor in self.monitors:
                monitor.collect_metrics()
                metrics.update(monitor.aggregate_metrics())
                monitor.clear_metrics()
            self.taken.append((int(time.time() * 1000), metrics))

    def write(self) -> None:
        """The samples not yet written (step = the sample's number), at most 1000 metrics a call."""
        with self.lock:
            batch = [Metric(f"system/{key}", float(value), stamp, step)
                     for step, (stamp, metrics) in enumerate(self.taken) if step >= self.written
                     for key, value in metrics.items()]
            for start in range(0, len(batch), 1000):
                tracking.client().log_batch(self.run_id, metrics=batch[start:start + 1000])
            self.written = len(self.taken)

    def write_live(self) -> None:
        """From the sampling thread: a failed write (the server briefly away) is kept for the next
        one and for the end, with one warning."""
        try:
            self.write()
        except Exception as exc:  # noqa: BLE001 - the run goes on; the samples stay pending
            if not self.failed:
                logging.getLogger("layerwise").warning(f"system metrics not written yet (kept for later): {exc}")
            self.failed = True


def live_system_metrics() -> bool:
    """Whether a run's system metrics are written while it runs: yes on a tracking server (its
    System metrics tab fills as the run goes), not on a sqlite file, where a second writer
    beside the run's own was seen to leave the store locked when an interrupt ended the run."""
    return tracking.sqlite_path(tracking.tracking_uri()) is None


@contextlib.contextmanager
def system_metrics(run_id: str, every: float, live: Optional[bool] = None) -> Iterator[None]:
    """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, disk, network; GPU where
    NVIDIA's library is present) on the run: a sample when the block starts, one every `every`
    seconds (a thread), one when it ends, so a run shorter than `every` has two (every = 0: off).
    live (default: live_system_metrics()): the thread writes each sample as it takes it; else all
    are written when the block ends. A failed run keeps its samples; an interrupted one keeps
    those already written (the runs must end KILLED first, nothing more is written)."""
    if not every:
        yield
        return
    live = live_system_metrics() if live is None else live
    samples, stop = _Samples(run_id), threading.Event()
    samples.take()

    def sample() -> None:
        while True:
            if live:
                samples.write_live()
            if stop.wait(every):
                return
            samples.take()

    sampler = threading.Thread(target=sample, name="layerwise-system-metrics", daemon=True)
    sampler.start()

    def finish() -> None:
        stop.set()
        sampler.join(timeout=30)  # a live write in flight ends within the server's timeouts
        samples.take()
        samples.write()
    try:
        yield
    except Exception as error:
        if tracking.unreachable(error):  # the server stopped answering: a write would wait out its timeouts again
            stop.set()
            run_logger().warning("system metrics not written: the tracking server stopped answering")
            raise
        try:  # a failed run keeps its samples, but their write must not replace the run's own error
            finish()
        except Exception as exc:  # noqa: BLE001
            run_logger().warning(f"system metrics not written: {exc}")
        raise
    except BaseException:
        stop.set()  # interrupted: nothing more is written, the runs must end KILLED first
        raise
    finish()
