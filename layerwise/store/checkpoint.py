"""Weight files: a stage's (its autoencoder) and the unrolled network's, each with the resolved
config that produced it, saved on the CPU and read with weights_only=True."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from layerwise.config import LayerConfig
from layerwise.nn.models import DeepAutoencoder, Reconstructor, build_autoencoder


def save_stage(path: Path, model: nn.Module, config: dict) -> Path:
    """config: plain types only (its layer as LayerConfig.model_dump()): load_stage reads the file
    with weights_only=True, which refuses pickled objects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # weights saved on the CPU: a stage trained on a GPU loads on any machine, and the store shares it
    torch.save({"encoder": _on_cpu(model.encoder.state_dict()), "decoder": _on_cpu(model.decoder.state_dict()),
                "config": config}, path)
    return path


def _on_cpu(state: dict) -> dict:
    return {key: value.cpu() for key, value in state.items()}


def load_stage(path: Path | str) -> tuple[Reconstructor, dict]:
    """A saved stage's whole autoencoder (encoder and decoder) and its config (as saved: plain dicts)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build_autoencoder(LayerConfig.model_validate(saved["config"]["layer"]))
    model.encoder.load_state_dict(saved["encoder"])
    model.decoder.load_state_dict(saved["decoder"])
    return model, saved["config"]


def load_encoder(path: Path | str) -> tuple[nn.Module, dict]:
    """The encoder block of a saved stage (Linear or conv + activation) and its config."""
    model, config = load_stage(path)
    return model.encoder, config


def save_unrolled(path: Path, model: DeepAutoencoder, config: dict) -> Path:
    """The fine-tuned deep autoencoder's weights (on the CPU: they load anywhere) with its
    pipeline's config (PipelineConfig.model_dump(): plain types)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": _on_cpu(model.state_dict()), "config": config}, path)
    return path


def load_unrolled(path: Path | str) -> DeepAutoencoder:
    """The fine-tuned deep autoencoder a save_unrolled file holds, in eval mode."""
    saved = torch.load(path, map_location="cpu", weights_only=True)  # the config as plain dicts
    model = DeepAutoencoder([build_autoencoder(LayerConfig.model_validate(layer))
                             for layer in saved["config"]["layers"]])
    model.load_state_dict(saved["state_dict"])
    return model.eval()
