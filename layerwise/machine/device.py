"""Which device a run computes on: `device: auto` (CUDA when available, else Apple's MPS, else the
CPU), or `cpu`, `cuda`, `cuda:N`, `mps`. The core follows its data: a stage or fine-tune runs where
its input tensors live, so the caller moves the data once and the loops never copy a batch."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from layerwise.config import ConfigError
from layerwise.config.schema import DEVICE_SPEC


def resolve_device(spec: str = "auto", key: str = "device") -> torch.device:
    """The torch device `spec` names on this machine; a ConfigError (exit 2) naming `key` where
    this machine has no such device."""
    if not DEVICE_SPEC.fullmatch(spec or ""):
        raise ConfigError(f"{key} is {spec!r}: auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} is {spec!r} but this machine has no CUDA device "
                              f"(torch {torch.__version__}; use device: auto or cpu)")
        index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{key} is {spec!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if spec == "mps" and not _mps_available():
        raise ConfigError(f"{key} is 'mps' but this machine has no Apple MPS device (use device: auto or cpu)")
    return torch.device(spec)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def describe_device(device: torch.device) -> str:
    """'cpu', 'cuda:0 (NVIDIA H100 80GB HBM3)', 'mps': what runs record and print."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def spread(device: torch.device, n: int) -> list[torch.device]:
    """n ablation cells' devices: on several CUDA devices (device: auto or cuda), cell i on card
    i mod count; otherwise every cell on `device`, sharing it."""
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        return [torch.device("cuda", i % torch.cuda.device_count()) for i in range(n)]
    return [device] * n


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The splits moved once (a no-op where they already are)."""
    return {name: t.to(device, non_blocking=True) for name, t in tensors.items()}


# Share of the accelerator's free memory the splits (and the codes the stages write beside them)
# may take: the rest is the models', the optimizer's, the batches' and the allocator's.
DATA_SHARE = 0.6


def free_memory(device: torch.device) -> Optional[int]:
    """Bytes free on a CUDA device now; None where it cannot be asked (the CPU, MPS)."""
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


def fits(needed: int, free: Optional[int], share: float = DATA_SHARE) -> bool:
    """needed bytes fit in share of free (unknown free memory: assume it does)."""
    return free is None or needed <= share * free


def place(tensors: dict[str, torch.Tensor], device: torch.device, extra_bytes: int = 0,
          log: Optional[Callable[[str], None]] = None) -> dict[str, torch.Tensor]:
    """The splits on `device` once, when they and extra_bytes (the codes the stages will write
    beside them) fit; else kept in host memory, pinned, and the loops copy each batch to the device
    the model is on (slower, but a dataset larger than the card still trains)."""
    if device.type == "cpu":
        return tensors
    needed = sum(t.numel() * t.element_size() for t in tensors.values()) + extra_bytes
    free = free_memory(device)
    if fits(needed, free):
        return to_device(tensors, device)
    if log:
        log(f"the data ({needed / 2**30:.1f} GiB with its codes) does not fit in {DATA_SHARE:.0%} of the "
            f"{free / 2**30:.1f} GiB free on {device}: kept in host memory, each batch copied to {device}")
    # pinned: the copies to a CUDA card run asynchronously
    return {name: t.pin_memory() if device.type == "cuda" else t for name, t in tensors.items()}


def codes_bytes(n_images: int, widths: list[int]) -> int:
    """The most code a greedy stack holds at once beside the pixels, fp32: stage 1 writes its codes,
    stage k reads stage k-1's and writes its own. widths: the layers' code widths, bottom first."""
    held = widths[:1] + [a + b for a, b in zip(widths, widths[1:])]
    return 4 * n_images * max(held, default=0)


def use_tf32(enabled: bool, device: Optional[torch.device] = None) -> None:
    """TF32 matmuls on CUDA (a 10-bit mantissa in the matmul's inputs: faster, not bit-identical
    to fp32): the `tf32: true` switch. No effect on the CPU."""
    if device is None or device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
