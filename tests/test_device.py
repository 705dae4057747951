"""Where a run computes: device resolution, the refusal of a device this machine lacks, weights
saved on the CPU whatever trained them, and (where a CUDA device exists) the core on it."""
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from layerwise.config import ConfigError, FinetuneConfig, LayerConfig, PipelineConfig, resolve_layers
from layerwise.machine.device import describe_device, resolve_device, spread

NO_CUDA = not torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(NO_CUDA, reason="no CUDA device on this machine")


def test_auto_picks_the_accelerator_there_is():
    device = resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.type == expected and resolve_device("cpu") == torch.device("cpu")
    assert describe_device(torch.device("cpu")) == "cpu"
    assert spread(torch.device("cpu"), 3) == [torch.device("cpu")] * 3  # one device: the cells share it


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: the refusal cannot happen here")
def test_a_cuda_device_this_machine_lacks_is_refused():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"device is '{spec}' but this machine has no CUDA device"):
            resolve_device(spec)


def test_a_device_that_is_not_one_is_a_config_error():
    with pytest.raises(ValidationError, match="'gpu' is not a device: auto, cpu, cuda, cuda:N or mps"):
        PipelineConfig.model_validate({"layers": [{"size": 8, "epochs": 1, "lr": 0.1}], "device": "gpu",
                                       "finetune": {"labels": 10, "epochs": 1, "lr": 0.1}})


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: the refusal cannot happen here")
def test_run_on_a_missing_device_exits_2_before_any_run(tmp_path, capsys, monkeypatch):
    from flows.cli import main

    store = tmp_path / "mlruns" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    assert main(["run", "smoke", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "pipeline 'smoke': device is 'cuda' but this machine has no CUDA device" in err
    assert "Traceback" not in err and not store.exists()


def _tiny_stack(device: torch.device):
    from layerwise.train.stack import pretrain_stack

    layers = [LayerConfig(input=64, size=16, epochs=2, lr=0.01, optimizer="adam", l1=0.01)]
    resolve_layers(layers, (1, 8, 8))
    x = torch.rand(200, 64, generator=torch.Generator().manual_seed(0))
    inputs = {"train": x[:150].to(device), "val": x[150:].to(device)}
    return layers, inputs, pretrain_stack(layers, inputs, seed=0)


def test_stage_weights_are_saved_on_the_cpu(tmp_path):
    from layerwise.store.checkpoint import load_stage, save_stage

    device = resolve_device("auto")
    layers, inputs, stack = _tiny_stack(device)
    assert next(stack.stages[0].model.parameters()).device.type == device.type  # trained where its data was
    path = save_stage(tmp_path / "pretrain-1.pt", stack.stages[0].model, {"layer": layers[0].model_dump()})
    saved = torch.load(path, weights_only=True)  # no map_location: loadable on a CPU-only machine
    assert all(t.device.type == "cpu" for t in saved["encoder"].values())
    model, _ = load_stage(path)
    assert torch.allclose(model.encoder(inputs["val"].cpu()), stack.stages[0].codes["val"].cpu(), atol=1e-6)


def test_a_registered_model_loads_and_predicts_on_the_cpu(tracking):
    """Saved from whichever device this machine has, loaded with map_location='cpu'."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from layerwise.datasets.splits import Labelled
    from layerwise.train.finetune import finetune
    from tasks.finetune import _log_model

    device = resolve_device("auto")
    layers, inputs, stack = _tiny_stack(device)
    y = torch.arange(200) % 3
    labelled = Labelled(inputs["train"], y[:150].to(device), inputs["val"], y[150:].to(device))
    tuned = finetune(stack.encoders, labelled, FinetuneConfig(epochs=1, lr=0.1, batch_size=16), layers, 3)
    expected = tuned.model.eval()(inputs["val"]).argmax(1).cpu()
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("device")).info.run_id
    _log_model(run_id, tuned.model.cpu().eval(), "device-classifier", inputs["val"][:4].cpu())
    loaded = mlflow.pytorch.load_model("models:/device-classifier/1", map_location="cpu")
    assert torch.equal(loaded(inputs["val"].cpu()).argmax(1), expected)


@needs_cuda
def test_the_core_on_cuda_matches_the_cpu_closely():
    cpu = _tiny_stack(torch.device("cpu"))[2]
    gpu = _tiny_stack(torch.device("cuda"))[2]
    a, b = cpu.stages[0].result.history[-1].metrics, gpu.stages[0].result.history[-1].metrics
    assert np.isclose(a["recon_loss"], b["recon_loss"], rtol=1e-3)
    assert gpu.codes["val"].device.type == "cuda"


def test_the_splits_go_to_the_device_only_when_they_and_their_codes_fit():
    from layerwise.machine.device import DATA_SHARE, codes_bytes, fits, place

    # the 784-1000-1000-500 stack on 70,000 images: stage 2 reads 1000-wide codes and writes 1000-wide ones
    assert codes_bytes(70_000, [1000, 1000, 500]) == 4 * 70_000 * 2000
    assert codes_bytes(10, [64]) == 4 * 10 * 64 and codes_bytes(10, []) == 0
    assert fits(int(DATA_SHARE * 1000), 1000) and not fits(int(DATA_SHARE * 1000) + 1, 1000)
    assert fits(10**15, None)  # a device that cannot say (MPS): tried
    x = {"train": torch.zeros(3, 2)}
    assert place(x, torch.device("cpu"))["train"] is x["train"]  # the CPU: nothing moves


@needs_cuda
def test_data_left_in_host_memory_trains_as_on_the_card(monkeypatch):
    """Splits too large for the card stay in host memory and each batch is copied: the same stage."""
    import layerwise.machine.device as dev
    from layerwise.train.stack import pretrain_stack

    layers, on_card, stack = _tiny_stack(torch.device("cuda"))
    monkeypatch.setattr(dev, "free_memory", lambda device: 0)  # nothing fits
    host = dev.place({k: v.cpu() for k, v in on_card.items()}, torch.device("cuda"))
    assert host["train"].device.type == "cpu" and host["train"].is_pinned()
    again = pretrain_stack(layers, host, seed=0, device=torch.device("cuda"))
    assert next(again.stages[0].model.parameters()).device.type == "cuda"
    assert again.codes["val"].device.type == "cpu"  # the codes stay beside the data
    assert again.stages[0].result.history[-1].metrics == stack.stages[0].result.history[-1].metrics
    assert torch.equal(again.codes["val"], stack.codes["val"].cpu())
