"""Stage weight files: the state dicts together with the resolved config that produced them."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from layerwise.config import LayerConfig
from layerwise.nn.models import Reconstructor, build_autoencoder


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
