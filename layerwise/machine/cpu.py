"""What this CPU can do for training: its vector ISA and whether it multiplies bf16 matrices in
hardware (AMX or AVX512-BF16), and the compiled training step (torch.compile) with its fallback.

bf16 on a CPU without those instructions is emulated and runs slower than fp32, so `precision: bf16`
is refused there (a ConfigError, exit 2) rather than allowed to be slow."""
from __future__ import annotations

import functools
import platform
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of hardware bf16 matmuls


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The processor's feature flags (Linux /proc/cpuinfo; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def processor_name() -> str:
    """'AMD EPYC', 'Intel(R) Xeon(R) Platinum 8480+', ...: what reports say the numbers came from."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_matmul_isa() -> Optional[str]:
    """'amx_bf16' or 'avx512_bf16' where this CPU multiplies bf16 in hardware (and PyTorch's oneDNN
    uses it), else None."""
    has = [flag for flag in BF16_FLAGS if flag in cpu_flags()]
    if has:
        return has[0]
    if cpu_flags():  # the flags were read and name neither
        return None
    # not Linux, or the flags unreadable: PyTorch's own check (oneDNN's bf16 support)
    mkldnn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return "onednn_bf16" if mkldnn is not None and mkldnn() else None


def isa_summary() -> dict[str, object]:
    """What make bench reports about the CPU."""
    return {"processor": processor_name(), "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_matmul": bf16_matmul_isa() or "none",
            "vector_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))}


def bf16_problem() -> Optional[str]:
    """Why `precision: bf16` would not pay on this CPU (None where it does)."""
    if bf16_matmul_isa():
        return None
    return (f"this CPU ({processor_name()}, {torch.backends.cpu.get_cpu_capability()}) has no bf16 matrix "
            f"instructions (AMX or AVX512-BF16): bf16 would be emulated, slower than fp32")


def configure_cpu(threads: Optional[int] = None) -> None:
    """Denormals slow the CPU down badly once sigmoid codes saturate; flush them. threads: torch's
    thread count (an ablation's cells split the cores)."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


# --- the compiled step -------------------------------------------------------------------------------

# A compiled step pays its compile time back only over many steps: measured on 2 cores (AMD EPYC,
# batch 256), a cold compile of an autoencoder step took about 13 s (3 s from inductor's on-disk
# cache) and saved 0.5 to 1.1 ms of a 9 to 17 ms step (784->1000: 13.7 -> 12.6 ms). `compile: auto`
# compiles the trainings with at least this many full batches.
COMPILE_MIN_STEPS = 20_000


def should_compile(setting: object, steps: int) -> bool:
    """compile: true, false or 'auto' (the trainings long enough to pay back the compile)."""
    if setting == "auto":
        return steps >= COMPILE_MIN_STEPS
    return bool(setting)


_warned: set[str] = set()


def compiled(fn: Callable, enabled: bool, name: str = "step") -> Callable:
    """fn compiled with torch.compile (fixed shapes) where enabled, falling back to fn itself, with
    one warning, where this machine cannot compile it (no C++ compiler, an unsupported op). The
    random draws inside fn stay PyTorch's own (inductor's fallback_random), so a compiled step
    draws the same noise as the eager one; only the float rounding of the fused math differs."""
    if not enabled:
        return fn
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    fast = torch.compile(fn, dynamic=False)
    state = {"ok": True}

    def call(*args):
        if state["ok"]:
            try:
                return fast(*args)
            except Exception as exc:  # compile failures surface on the first call, before any math
                if not _is_compile_failure(exc):
                    raise
                state["ok"] = False
                message = f"{name}: torch.compile is not available here ({type(exc).__name__}: " \
                          f"{str(exc).splitlines()[0][:200]}); training uncompiled"
                if message not in _warned:
                    _warned.add(message)
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
        return fn(*args)

    call.compiled = lambda: state["ok"]  # type: ignore[attr-defined]
    return call


def _is_compile_failure(exc: Exception) -> bool:
    from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException

    return isinstance(exc, (BackendCompilerFailed, TorchDynamoException)) or "InductorError" in type(exc).__name__
