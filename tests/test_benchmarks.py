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
