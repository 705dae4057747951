"""The Python API without Prefect or MLflow: README's example runs as written, the library's greedy
loop is the one the pipeline runs (the task's stage is bit-identical to the library's), and the
core imports no orchestrator or tracker."""
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, mnist_root
from layerwise.config import load_pipeline
from layerwise.datasets.mnist import load_mnist
from layerwise.train.stack import pretrain_stack

pytestmark = pytest.mark.slow


def readme_example() -> str:
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path):
    done = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={"MNIST_ROOT": str(mnist_root()), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^test error \d+\.\d\d %$", done.stdout, re.M), done.stdout[-2000:]
    assert "[pretrain-3] epoch 1/1" in done.stdout and "[finetune] epoch 1/1" in done.stdout


def test_the_core_imports_neither_prefect_nor_mlflow():
    code = ("import sys, layerwise.train.stack, layerwise.train.finetune, layerwise.config, layerwise.machine.memory, layerwise.store.cache; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_the_pipelines_stage_task_trains_what_the_library_trains(tmp_path, tracking):
    from mlflow.tracking import MlflowClient

    from tasks import tracking as tr
    from tasks.context import RunContext
    from tasks.pretrain import pretrain_layer

    cfg = load_pipeline("smoke", overrides=["layers.0.size=24", "layers.1.input=24", "layers.1.size=12",
                                            "layers.2.input=12", "layers.2.size=6"])
    mnist = load_mnist(mnist_root(), train_size=300, val_size=60, split_seed=0)
    inputs = {"train": mnist.x_train, "val": mnist.x_val}
    library = pretrain_stack(cfg.layers, inputs, seed=0)

    client = MlflowClient()
    experiment_id = tr.ensure_experiment(client, "api")
    parent = tr.start_run(client, experiment_id, "parent", {tr.PIPELINE_TAG: "api"})
    run = RunContext(parent, experiment_id, "api", tmp_path / "w")
    task = pretrain_stack(cfg.layers, inputs, seed=0, keep_codes=False,
                          stage=lambda layer, codes, seed, index, callback: pretrain_layer.fn(
                              run, layer, codes, seed, index, f"key-{index}"))
    assert len(task.stages) == len(library.stages) == 3
    for ours, theirs in zip(task.encoders, library.encoders):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert torch.equal(task.codes["val"], library.codes["val"])
    assert task.stages[0].codes == {} and library.stages[0].codes["train"].shape == (240, 24)  # keep_codes
    assert all(not p.requires_grad for encoder in library.encoders for p in encoder.parameters())
