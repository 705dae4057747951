"""The GPU check (`make bench-gpu`, or `python -m benchmarks.gpu` where only torch and torchvision
are installed): on the accelerator, in one process and about 5 minutes on one H100,

1. the matmul peak in the precision used (fp32, tf32 or bf16), measured here as `make bench`
   measures the CPU's;
2. each of quickstart's dense pretraining stages (784→1000, 1000→1000, 1000→500) training at batch
   1024 and 4096: achieved GFLOP/s against that peak (target ≥ 0.5 at batch ≥ 1024);
3. quickstart's pretraining and fine-tuning (benchmarks/bare_quickstart.py: the same split, stack,
   seeds and settings in plain PyTorch) on the device: seconds against the CPU's in
   results/e2e.json (target ≥ 10× faster) and the test error against the CPU's 1.62 %;
4. where the whole project is installed, the whole `layerwise run quickstart --device DEV`.

Writes benchmarks/results/gpu.json and gpu.md, named by the card. On a machine without a GPU it runs
on the CPU (`--device cpu`, small sizes with --quick) only to check the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STAGES = [(784, 1000), (1000, 1000), (1000, 500)]
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def card(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} ({os.cpu_count()} cores)"


def set_precision(precision: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best seconds of fn() over repeats, after a warm-up, with the device synchronised."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(device: torch.device, precision: str, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    b = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    seconds = timed(lambda: [a @ b for _ in range(10)], device, 5) / 10
    return 2 * size ** 3 / seconds / 1e9


def stage_throughput(device: torch.device, precision: str, n_in: int, n_code: int, batch: int, steps: int) -> dict:
    """Training steps of a quickstart stage (sigmoid code, BCE reconstruction + L1, Adam) on random
    inputs in [0, 1]: per step 10·batch·n_in·n_code matmul FLOPs (as benchmarks/kernels.py counts)."""
    encoder = nn.Sequential(nn.Linear(n_in, n_code), nn.Sigmoid()).to(device)
    decoder = nn.Linear(n_code, n_in).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    x = torch.rand(batch * 8, n_in, device=device)

    def run() -> None:
        for i in range(steps):
            xb = x[(i % 8) * batch:(i % 8 + 1) * batch]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                code = encoder(xb)
                logits = decoder(code)
            loss = F.binary_cross_entropy_with_logits(logits.float(), xb, reduction="sum") / batch + \
                0.03 * code.float().abs().sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    seconds = timed(run, device, 3)
    return {"stage": f"{n_in}->{n_code}", "batch_size": batch, "step_ms": 1000 * seconds / steps,
            "gflops": 10.0 * batch * n_in * n_code * steps / seconds / 1e9}


def bare_quickstart(device: torch.device, data_root: str, quick: bool) -> dict:
    from benchmarks import bare_quickstart as bare

    args = argparse.Namespace(data_root=data_root, train_size=12000 if quick else None,
                              pretrain_epochs=1 if quick else None, finetune_epochs=2 if quick else 15,
                              out=None, device=str(device))
    return bare.run(args)


def whole_command(device: torch.device, data_root: str) -> dict | None:
    """`layerwise run quickstart --device DEV` as a process, where the project is installed."""
    try:
        import flows.cli  # noqa: F401
    except ImportError as missing:
        return {"skipped": f"the project is not installed here ({missing.name} missing)"}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "LAYERWISE_WORKDIR": f"{tmp}/work",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "flows", "run", "quickstart", "--device", str(device),
                               "--data-root", data_root], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    summary = [line for line in done.stdout.splitlines() if line.startswith("=== quickstart")]
    return {"exit": done.returncode, "process_seconds": seconds, "summary": summary[-1] if summary else "",
            "tail": (done.stdout + done.stderr)[-1500:] if done.returncode else ""}


def cpu_reference() -> dict | None:
    """The 2-core CPU's bare quickstart from the end-to-end line (results/e2e.json or latest.json)."""
    for name in ("e2e.json", "latest.json"):
        path = RESULTS / name
        if path.is_file():
            runs = [r for r in json.loads(path.read_text()).get("e2e", {}).get("runs", []) if r["kind"] == "bare"]
            if runs:
                return {"from": f"results/{name}", "work_seconds": min(r["work_seconds"] for r in runs),
                        "test_error": runs[0]["test_error"]}
    return None


def markdown(r: dict) -> str:
    lines = [f"## GPU check: {r['card']} ({r['device']}, {r['precision']}), torch {r['torch']}",
             f"Run {r['started']}, {r['seconds'] / 60:.1f} min{' (quick sizes)' if r['quick'] else ''}.", "",
             f"Matmul peak ({r['precision']}, {r['matmul_size']}²): {r['peak_gflops']:.0f} GFLOP/s.", "",
             "| stage | batch | ms / step | GFLOP/s | of peak | target |", "|---|---|---|---|---|---|"]
    for s in r["stages"]:
        lines.append(f"| {s['stage']} | {s['batch_size']} | {s['step_ms']:.2f} | {s['gflops']:.0f} | "
                     f"{s['fraction_of_peak']:.2f} | ≥ 0.5: {'met' if s['fraction_of_peak'] >= 0.5 else '**missed**'} |")
    b, ref = r["bare_quickstart"], r.get("cpu_reference")
    lines += ["", f"quickstart's work (bare PyTorch, the project's split and seeds) on {r['device']}: pretraining "
                  f"{b['pretrain_seconds']:.1f} s + fine-tuning {b['finetune_seconds']:.1f} s, test error "
                  f"{b['test_error']:.2f} %."]
    if ref and not r["quick"]:
        speedup = ref["work_seconds"] / b["work_seconds"]  # both: data loading, pretraining, fine-tuning
        lines.append(f"Against the CPU ({ref['from']}: {ref['work_seconds']:.1f} s against {b['work_seconds']:.1f} s "
                     f"here, data loading included; {ref['test_error']:.2f} %): {speedup:.1f}× faster (target ≥ 10×: "
                     f"{'met' if speedup >= 10 else '**missed**'}).")
    whole = r.get("whole_command") or {}
    if "skipped" in whole:
        lines.append(f"`layerwise run quickstart`: skipped, {whole['skipped']}.")
    elif whole:
        lines.append(f"`layerwise run quickstart --device {r['device']}`: exit {whole['exit']}, "
                     f"{whole['process_seconds']:.1f} s; {whole['summary']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=list(DTYPES), default="fp32")
    parser.add_argument("--data-root", default=os.environ.get("MNIST_ROOT") or "data")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, measures nothing")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()
    device, started = torch.device(args.device), time.perf_counter()
    set_precision(args.precision)
    size = 2048 if args.quick or device.type == "cpu" else 8192
    result = {"device": str(device), "card": card(device), "precision": args.precision, "torch": torch.__version__,
              "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "matmul_size": size}
    result["peak_gflops"] = peak = matmul_peak(device, args.precision, size)
    print(f"matmul peak {peak:.0f} GFLOP/s on {result['card']}", flush=True)
    result["stages"] = []
    for n_in, n_code in STAGES:
        for batch in ((256,) if args.quick else (1024, 4096)):
            row = stage_throughput(device, args.precision, n_in, n_code, batch, 5 if args.quick else 50)
            row["fraction_of_peak"] = row["gflops"] / peak
            result["stages"].append(row)
            print(f"  {row['stage']} batch {batch}: {row['gflops']:.0f} GFLOP/s = {row['fraction_of_peak']:.2f} of peak",
                  flush=True)
    result["bare_quickstart"] = bare_quickstart(device, args.data_root, args.quick)
    result["cpu_reference"] = cpu_reference()
    if not args.quick:
        result["whole_command"] = whole_command(device, args.data_root)
    result["seconds"] = time.perf_counter() - started
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu" if not args.quick else "quick.gpu"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    report = markdown(result)
    (out / f"{name}.md").write_text(report)
    print("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
