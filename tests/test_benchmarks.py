"""`make bench` is run rarely and by hand, so its pieces are run here on small inputs: a change that
breaks the bench (a renamed function it times, a moved setting) fails `make test`, not the next bench.
The bench's targets themselves are measured by `make bench`, never asserted here."""
from __future__ import annotations

import pytest
import torch

from conftest import mnist_root

pytestmark = pytest.mark.slow  # spawns a pipeline process


def test_a_pipeline_run_is_timed_in_its_own_process(tmp_path, monkeypatch):
    from benchmarks.run import orchestration, pipeline_run, pretraining_seconds

    monkeypatch.setenv("MNIST_ROOT", str(mnist_root()))
    run = pipeline_run("smoke-ablation", ["--set", "ablation.seeds=[0]"], tmp_path / "work", tmp_path / "store", "smoke")
    assert len(run["result"]["cells"]) == 4 and run["peak_rss_mb"] > 100
    # every timed part was found where the bench patches it: the data read and each stage's training
    assert run["seconds"]["data_loading"] > 0, run["seconds"]
    assert {"compute:pretrain-1", "compute:pretrain-2", "compute:finetune", "encoding"} <= set(run["seconds"])
    split = orchestration(run)
    assert 0 < split["compute_seconds"] < split["wall_seconds"] and 0 < split["non_compute_fraction"] < 1
    assert pretraining_seconds(run) > 0


def test_kernels_time_the_project_loop_against_the_bare_one():
    from benchmarks import kernels

    x = torch.rand(512, 784, generator=torch.Generator().manual_seed(0))
    result = kernels.run(x, x[:128], 1, [(784, 64), (64, 32)], 64, 0.03, repeats=1, log=lambda _: None)
    assert [s["stage"] for s in result["stages"]] == ["784->64", "64->32"]
    assert all(s["epoch_seconds"] > 0 and s["overhead_ratio"] > 0 for s in result["stages"])
    profile = kernels.step_profile(784, 64, 32, 0.03, 1, steps=5)
    assert set(profile) == {"adam", "adam_fused"}


def test_the_bare_script_still_does_quickstarts_work():
    from benchmarks.e2e import check_bare_settings

    check_bare_settings()  # raises naming what moved


def test_the_cpu_section_measures_each_precision_against_its_own_peak():
    from benchmarks import cpu
    from benchmarks.report import cpu_targets
    from layerwise.machine.cpu import isa_summary

    x = torch.rand(256, 784, generator=torch.Generator().manual_seed(0))
    result = cpu.stages(x, x[:64], 1, [(784, 32)], 64, 0.03, log=lambda _: None)
    precisions = {row["precision"] for row in result["stages"]}
    assert precisions == ({"fp32", "bf16"} if cpu.bf16_matmul_isa() else {"fp32"})
    assert set(result["peaks_gflops"]) == precisions
    assert {row["compiled"] for row in result["stages"]} == {False, True}
    assert all(row["epoch_seconds"] > 0 and row["fraction_of_peak"] > 0 for row in result["stages"])
    fake_split = {"wall_seconds": 10.0, "compute_seconds": 9.0, "non_compute_fraction": 0.1, "parts": {},
                  "import_seconds": 1.0, "test_error": 1.6}
    quickstart = {"fp32": fake_split, "bf16": {**fake_split, "compute_seconds": 3.0, "test_error": 1.7},
                  "bf16_compute_speedup": 3.0}
    rows = cpu_targets({**result, "isa": isa_summary(), "quickstart": quickstart})
    assert any("3.00×" in row and "met" in row for row in rows)
    assert any("+0.10 points" in row for row in rows)


def test_the_interrupt_loop_times_an_interrupted_run(tmp_path):
    """benchmarks/interrupt_loop.py's pieces on one iteration (the loop runs 100: docs/operating.md).
    Ctrl-C 3 s in lands in the run's start (its imports, the temporary Prefect API) on any machine."""
    import signal

    from benchmarks.interrupt_loop import one_run, open_runs, run_env, summary

    store = tmp_path / "mlruns"
    row = one_run("smoke", run_env(store, tmp_path / "prefect", tmp_path / "work"), tmp_path / "run.log", 3.0,
                  signal.SIGINT)
    assert row["interrupted"] and row["returncode"] == 130 and row["exit_s"] < 60, (tmp_path / "run.log").read_text()
    assert open_runs(store) == [] and not row["left_processes"] and not row["traceback"]
    rows = [{**row, "iteration": i, "exit_s": s, "open_runs": []}  # as main() completes each row
            for i, s in enumerate((1.0, 2.0, 3.0, 40.0))]
    figures = summary(rows)["smoke"]
    assert figures["exit_s"]["p50"] == 2.5 and figures["exit_s"]["max"] == 40.0 and figures["runs_left_open"] == 0
