"""Training speed against the machine: fp32 matmul peak, each stage's achieved GFLOP/s, the
project's training loop against a bare PyTorch loop doing identical work, and epoch time against
training-set size and batch size. All measured in one process with the same thread count."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from layerwise.config import LayerConfig
from layerwise.nn.losses import bce_with_logits_sum
from layerwise.nn.models import seeded_autoencoder
from layerwise.machine.cpu import configure_cpu
from layerwise.train.autoencoder import ACTIVE_THRESHOLD, train_autoencoder


def matmul_peak(threads: int, size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of a square matmul in dtype: the ceiling a training stage in that precision is
    measured against."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def stage_flops(n_in: int, n_code: int, n_train: int, n_val: int) -> float:
    """Matmul FLOPs of one autoencoder epoch. Training, per example: encoder forward and weight
    gradient (the input needs no gradient) 4·n_in·n_code, decoder forward, input gradient and weight
    gradient 6·n_in·n_code. Validation: the forward pass, 4·n_in·n_code per example."""
    return 10.0 * n_in * n_code * n_train + 4.0 * n_in * n_code * n_val


def train_stage(x: torch.Tensor, x_val: torch.Tensor, n_code: int, batch: int, l1: float, epochs: int = 1,
                precision: str = "fp32", compile_step: bool = False):
    """The bench's stage: a sigmoid autoencoder on x seeded as bare_epoch's (1), BCE + l1, Adam lr
    1e-3; its TrainResult."""
    seed = 1
    model = seeded_autoencoder(x.shape[1], n_code, "sigmoid", "bce", seed)
    layer = LayerConfig(input=x.shape[1], size=n_code, loss="bce", epochs=epochs, batch_size=batch,
                        optimizer="adam", lr=1e-3, l1=l1, precision=precision, compile=compile_step)
    return train_autoencoder(model, x, x_val, layer, seed)


def project_epoch(x: torch.Tensor, x_val: torch.Tensor, n_code: int, batch: int, l1: float) -> float:
    """Wall seconds of one epoch from init, the call included."""
    t0 = time.perf_counter()
    train_stage(x, x_val, n_code, batch, l1)
    return time.perf_counter() - t0


def bare_epoch(x: torch.Tensor, x_val: torch.Tensor, n_code: int, batch: int, l1: float, seed: int = 1) -> float:
    """The same epoch written as the shortest plain PyTorch: same init, batch order, optimizer,
    loss and validation metrics; no callbacks, no checks."""
    model = seeded_autoencoder(x.shape[1], n_code, "sigmoid", "bce", seed)
    enc, dec = model.encoder, model.decoder
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    t0 = time.perf_counter()
    total = torch.zeros(())
    order = torch.randperm(len(x), generator=gen)
    for start in range(0, len(x), batch):
        xb = x[order[start:start + batch]]
        code = enc(xb)
        recon = bce_with_logits_sum(dec(code), xb) / len(xb)
        loss = recon + l1 * code.abs().sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += recon.detach() * len(xb)
    total.item()
    with torch.inference_mode():
        for start in range(0, len(x_val), 8192):
            xb = x_val[start:start + 8192]
            code = enc(xb)
            bce_with_logits_sum(dec(code), xb).item()
            code.abs().sum().item()
            (code.abs() > ACTIVE_THRESHOLD).sum().item()
    return time.perf_counter() - t0


def stage_inputs(x_pixels: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels for the first stage; sigmoid-range codes (values in (0, 1)) for the stages above."""
    if width == x_pixels.shape[1]:
        return x_pixels
    return torch.rand(len(x_pixels), width, generator=torch.Generator().manual_seed(0))


def run(x_train: torch.Tensor, x_val: torch.Tensor, threads: int, stages: list[tuple[int, int]], batch: int,
        l1: float, repeats: int = 2, log=print) -> dict:
    configure_cpu(threads)
    peak = matmul_peak(threads)
    log(f"fp32 matmul peak, {threads} thread(s): {peak:.0f} GFLOP/s")
    results = {"threads": threads, "matmul_peak_gflops": peak, "batch_size": batch, "stages": []}
    for n_in, n_code in stages:
        x, xv = stage_inputs(x_train, n_in), stage_inputs(x_val, n_in)
        ours, bare = [], []
        for _ in range(repeats):  # interleaved, so drift in the machine's speed hits both alike
            ours.append(project_epoch(x, xv, n_code, batch, l1))
            bare.append(bare_epoch(x, xv, n_code, batch, l1))
        ours, bare = min(ours), min(bare)
        flops = stage_flops(n_in, n_code, len(x), len(xv))
        row = {"stage": f"{n_in}->{n_code}", "epoch_seconds": ours, "bare_epoch_seconds": bare,
               "gflops": flops / ours / 1e9, "fraction_of_peak": flops / ours / 1e9 / peak,
               "overhead_ratio": ours / bare}
        log(f"  {row['stage']}: epoch {ours:.2f} s, {row['gflops']:.0f} GFLOP/s = {row['fraction_of_peak']:.2f} of "
            f"peak; bare loop {bare:.2f} s, ratio {row['overhead_ratio']:.3f}")
        results["stages"].append(row)
    return results


def scaling(x_train: torch.Tensor, x_val: torch.Tensor, threads: int, sizes: list[int], batches: list[int],
            batch: int, l1: float, log=print) -> dict:
    """Epoch time of the 784->1000 stage against training-set size (at the default batch) and
    against batch size (on the full set)."""
    configure_cpu(threads)
    by_size = []
    for n in sizes:
        seconds = project_epoch(x_train[:n], x_val, 1000, batch, l1)
        by_size.append({"images": n, "epoch_seconds": seconds, "us_per_image": 1e6 * seconds / n})
        log(f"  784->1000, {n} images, batch {batch}: {seconds:.2f} s")
    by_batch = []
    for b in batches:
        seconds = project_epoch(x_train, x_val, 1000, b, l1)
        flops = stage_flops(784, 1000, len(x_train), len(x_val))
        by_batch.append({"batch_size": b, "epoch_seconds": seconds, "gflops": flops / seconds / 1e9})
        log(f"  784->1000, batch {b}: {seconds:.2f} s ({flops / seconds / 1e9:.0f} GFLOP/s)")
    return {"by_size": by_size, "by_batch": by_batch}


def step_profile(n_in: int, n_code: int, batch: int, l1: float, threads: int, steps: int = 100) -> dict:
    """Where one training step's time goes (forward, backward, optimizer), with the default Adam
    and with the fused one: what bounds a stage below the matmul peak."""
    configure_cpu(threads)
    x = torch.rand(batch * steps, n_in, generator=torch.Generator().manual_seed(0))
    profile = {}
    for name, options in (("adam", {}), ("adam_fused", {"fused": True})):
        model = seeded_autoencoder(n_in, n_code, "sigmoid", "bce", 1)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, **options)
        parts = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        for i in range(steps + 10):
            if i == 10:  # warm-up excluded
                parts = dict.fromkeys(parts, 0.0)
            xb = x[(i % steps) * batch:(i % steps + 1) * batch]
            t0 = time.perf_counter()
            code, out = model(xb)
            loss = F.binary_cross_entropy_with_logits(out, xb, reduction="sum") / batch + \
                l1 * code.abs().sum(dim=1).mean()
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            parts["forward"] += t1 - t0
            parts["backward"] += t2 - t1
            parts["optimizer"] += t3 - t2
        ms = {k: 1000 * v / steps for k, v in parts.items()}
        flops = 10.0 * n_in * n_code * batch
        profile[name] = {"ms_per_step": ms, "gflops": flops / (sum(ms.values()) / 1000) / 1e9,
                         "gflops_without_optimizer": flops / ((ms["forward"] + ms["backward"]) / 1000) / 1e9}
    return profile
