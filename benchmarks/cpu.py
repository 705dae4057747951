"""The CPU at its limit (`make bench ARGS="--only cpu"`): the processor's ISA, its fp32 and bf16
matmul peaks, each dense quickstart stage's achieved fraction of the peak of the precision it runs
in (uncompiled, and with the compiled step), and quickstart's whole command in fp32 and in bf16:
its wall split into the model's math and the rest, the compute speed-up and the test errors."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from benchmarks.kernels import matmul_peak, stage_flops, stage_inputs, train_stage
from layerwise.machine.cpu import bf16_matmul_isa
from layerwise.machine.cpu import configure_cpu

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def steady_epoch(x: torch.Tensor, x_val: torch.Tensor, n_code: int, batch: int, l1: float, precision: str,
                 compile_step: bool, epochs: int = 3) -> float:
    """The fastest of a stage's epochs after the first (training and validation): the first pays for
    compiling (with compile_step) and warms the caches, so this is what a long stage runs at; the
    fastest, because the machine's speed drifts."""
    result = train_stage(x, x_val, n_code, batch, l1, epochs=epochs, precision=precision, compile_step=compile_step)
    return min(report.seconds for report in result.history[1:])


def stages(x_train: torch.Tensor, x_val: torch.Tensor, threads: int, shapes: list[tuple[int, int]], batch: int,
           l1: float, log: Callable[[str], None] = print) -> dict:
    configure_cpu(threads)
    precisions = ["fp32", "bf16"] if bf16_matmul_isa() else ["fp32"]
    peaks = {p: matmul_peak(threads, dtype=DTYPES[p]) for p in precisions}
    log("matmul peak, " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items()) + f" ({threads} threads)")
    rows = []
    for n_in, n_code in shapes:
        x, xv = stage_inputs(x_train, n_in), stage_inputs(x_val, n_in)
        flops = stage_flops(n_in, n_code, len(x), len(xv))
        for precision in precisions:
            for compile_step in (False, True):
                seconds = steady_epoch(x, xv, n_code, batch, l1, precision, compile_step)
                row = {"stage": f"{n_in}->{n_code}", "precision": precision, "compiled": compile_step,
                       "epoch_seconds": seconds, "gflops": flops / seconds / 1e9,
                       "fraction_of_peak": flops / seconds / 1e9 / peaks[precision]}
                log(f"  {row['stage']} {precision}{' compiled' if compile_step else ''}: epoch {seconds:.2f} s, "
                    f"{row['gflops']:.0f} GFLOP/s = {row['fraction_of_peak']:.2f} of the {precision} peak")
                rows.append(row)
    return {"threads": threads, "batch_size": batch, "peaks_gflops": peaks, "stages": rows}


def quickstart_precisions(pipeline_run: Callable, orchestration: Callable, scratch: Path, shrink: list[str],
                          log: Callable[[str], None] = print, fp32_run: dict | None = None) -> dict:
    """`layerwise run quickstart` (with the shrink overrides) in fp32 and in bf16 (where the CPU has
    it), fresh stores each; fp32_run: an fp32 run the bench already made, used instead of a new one."""
    runs = {}
    for precision in (["fp32", "bf16"] if bf16_matmul_isa() else ["fp32"]):
        run = fp32_run if precision == "fp32" and fp32_run else pipeline_run(
            "quickstart", shrink + ["--set", f"precision={precision}"], scratch / f"qs-{precision}",
            scratch / f"qs-{precision}-mlruns", f"quickstart-{precision}")
        split = orchestration(run)
        runs[precision] = {**split, "test_error": run["result"]["test_error"]}
        log(f"  {precision}: compute {split['compute_seconds']:.1f} s of {split['wall_seconds']:.1f} s wall "
            f"({split['non_compute_fraction']:.1%} outside the model's math), test error "
            f"{runs[precision]['test_error']:.2f} %")
    if "bf16" in runs:
        runs["bf16_compute_speedup"] = runs["fp32"]["compute_seconds"] / runs["bf16"]["compute_seconds"]
    return runs
