"""What the CPU can do: bf16 detected from its flags, and `precision: bf16` refused (exit 2, the
key named, before anything runs) on a CPU without bf16 matrix instructions."""
import pytest

from layerwise.machine import cpu
from layerwise.config import ConfigError, load_pipeline


def _flags(monkeypatch, flags):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))


def test_bf16_isa_is_read_from_the_flags(monkeypatch):
    _flags(monkeypatch, {"avx2", "avx512f", "avx512_bf16"})
    assert cpu.bf16_matmul_isa() == "avx512_bf16" and cpu.bf16_problem() is None
    _flags(monkeypatch, {"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"})
    assert cpu.bf16_matmul_isa() == "amx_bf16"
    _flags(monkeypatch, {"avx2", "fma", "avx512f"})
    assert cpu.bf16_matmul_isa() is None and "no bf16 matrix instructions" in cpu.bf16_problem()


def test_bf16_on_a_cpu_without_it_is_a_config_error_naming_precision(monkeypatch):
    from flows.checks import check_device

    cfg = load_pipeline("smoke", overrides=["precision=bf16", "device=cpu"])
    _flags(monkeypatch, {"avx2", "fma"})
    with pytest.raises(ConfigError, match="precision is 'bf16'.*slower than fp32.*precision: fp32"):
        check_device("smoke", cfg, "pipelines.yaml")
    _flags(monkeypatch, {"avx2", "avx512_bf16"})
    assert check_device("smoke", cfg, "pipelines.yaml") == "cpu"
    assert check_device("smoke", load_pipeline("smoke", overrides=["device=cpu"]), "x") == "cpu"


def test_isa_summary_names_the_processor():
    summary = cpu.isa_summary()
    assert summary["processor"] and summary["torch_capability"]
    assert summary["bf16_matmul"] in ("amx_bf16", "avx512_bf16", "onednn_bf16", "none")


def test_bf16_stage_encodes_and_evaluates_in_bf16_and_hands_on_fp32_codes():
    """precision: bf16 covers the whole forward work of a stage (training, validation, encoding the
    splits), and the codes the next stage reads stay fp32, close to the fp32 encoding."""
    import torch

    from layerwise.config import LayerConfig
    from layerwise.train.evaluate import encode
    from layerwise.train.stack import pretrain_stage
    from layerwise.train.autoencoder import evaluate_autoencoder

    x = torch.rand(300, 40, generator=torch.Generator().manual_seed(0))
    layer = LayerConfig(input=40, size=24, loss="bce", epochs=1, batch_size=64, optimizer="adam", lr=1e-2,
                        l1=0.01, precision="bf16")
    stage = pretrain_stage(layer, {"train": x, "val": x[:50]}, seed=0)
    codes = stage.codes["train"]
    assert codes.dtype == torch.float32 and codes.shape == (300, 24)
    exact = encode(stage.encoder, x)  # fp32
    assert not torch.equal(codes, exact) and torch.allclose(codes, exact, atol=2e-2)
    in_bf16 = evaluate_autoencoder(stage.model, x[:50], 0.01, precision="bf16")
    in_fp32 = evaluate_autoencoder(stage.model, x[:50], 0.01)
    assert in_bf16["recon_loss"] != in_fp32["recon_loss"]
    assert abs(in_bf16["recon_loss"] - in_fp32["recon_loss"]) < 0.02 * in_fp32["recon_loss"]
