"""The compiled training step (layerwise.machine.cpu.compiled): the same losses and noise as uncompiled,
and a clean fallback, with one warning, where this machine cannot compile."""
import warnings

import pytest
import torch

from layerwise.config import LayerConfig
from layerwise.machine.cpu import COMPILE_MIN_STEPS, compiled, should_compile
from layerwise.nn.models import seeded_autoencoder
from layerwise.train.autoencoder import train_autoencoder


def test_auto_compiles_only_long_trainings():
    assert not should_compile("auto", COMPILE_MIN_STEPS - 1)
    assert should_compile("auto", COMPILE_MIN_STEPS)
    assert should_compile(True, 1) and not should_compile(False, 10 ** 9)


def _stage(compile_setting) -> dict:
    torch.manual_seed(0)
    x = torch.rand(64 * 6 + 10, 20, generator=torch.Generator().manual_seed(1))  # a ragged last batch
    model = seeded_autoencoder(20, 12, "sigmoid", "bce", 3)
    layer = LayerConfig(input=20, size=12, loss="bce", epochs=2, batch_size=64, optimizer="adam", lr=1e-2,
                        l1=0.01, denoising={"kind": "mask", "level": 0.3}, compile=compile_setting)
    return train_autoencoder(model, x, x[:50], layer, seed=5).history[-1].metrics


@pytest.mark.slow  # compiles a graph: seconds to tens of seconds on 2 cores
def test_compiled_stage_matches_uncompiled_to_rounding():
    """Same masks (inductor's fallback_random), same batches, same updates: only the rounding of the
    fused elementwise math may differ."""
    eager, fast = _stage(False), _stage(True)
    for key, value in eager.items():
        assert fast[key] == pytest.approx(value, rel=1e-4), key


@pytest.mark.slow
def test_no_compiler_falls_back_with_one_warning(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setenv("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # a cached kernel would need no compiler
    torch._dynamo.reset()

    def losses(x):
        return (torch.sigmoid(x) * 3).sum()

    step = compiled(losses, True, "stage-x")
    x = torch.randn(8, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = step(x), step(x)
    assert torch.equal(first, losses(x)) and torch.equal(second, losses(x))
    assert not step.compiled()
    messages = [str(w.message) for w in caught if "torch.compile is not available" in str(w.message)]
    assert len(messages) == 1 and "stage-x" in messages[0]
    torch._dynamo.reset()
