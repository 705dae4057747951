"""The benchmark results as a markdown report: one table of targets, then the details."""
from __future__ import annotations

GIB_MB = 1024.0
LABELS = {
    "prefect_api_start": "Prefect API start (temporary server)",
    "prefect_bookkeeping_and_glue": "Prefect task bookkeeping and glue",
    "mlflow_logging": "MLflow logging (runs, params, metrics, artifacts, model)",
    "data_loading": "data loading (MD5 check, MNIST decode, split)",
    "encoding": "compute: encoding each split once per stage",
    "intermediate_files": "intermediate files (inputs, codes, weights)",
    "cache_lookup": "stage/cell store lookups",
    "cache_store": "stage/cell store writes",
}


def _row(what: str, measured: str, target: str, ok) -> str:
    mark = "—" if ok is None else ("met" if ok else "**missed**")
    return f"| {what} | {measured} | {target} | {mark} |"


def targets(r: dict) -> list[str]:
    rows = ["| measure | measured | target | |", "|---|---|---|---|"]
    if "kernels" in r:
        rows += _section_targets(r)
    elif "data_sources" in r:
        rows += data_targets(r["data_sources"])
    if "semi_supervised" in r:
        rows += semi_targets(r["semi_supervised"])
    if "cpu" in r:
        rows += cpu_targets(r["cpu"])
    if "e2e" in r:
        rows += e2e_targets(r["e2e"])
    return rows


def data_targets(d: dict) -> list[str]:
    rows = [_row(f"folder source: decode {d['images']:,} MNIST PNGs the first time", f"{d['decode_seconds']:.1f} s",
                 "< 60 s", d["decode_seconds"] < 60),
            _row("folder source: a second run reads the decode cache", f"{d['cache_seconds']:.2f} s", "< 3 s",
                 d["cache_seconds"] < 3)]
    if "same_split_as_official" in d:
        rows.append(_row("folder source: the same split as the official files",
                         "identical" if d["same_split_as_official"] else "differs", "identical",
                         d["same_split_as_official"]))
    return rows


SEMI_COST_TARGET = 1.2  # a semi-supervised step's time ratio over its FLOP ratio (against a plain step)


def semi_targets(s: dict) -> list[str]:
    return [_row(f"semi-supervised step ({s['labelled_batch']} labelled + {s['unlabelled_batch']} unlabelled) "
                 f"against a plain one: time ratio / FLOP ratio",
                 f"{s['semi_ms']:.1f} / {s['plain_ms']:.1f} ms = x{s['time_ratio']:.2f}; "
                 f"{s['semi_gflop']:.2f} / {s['plain_gflop']:.2f} GFLOP = x{s['flop_ratio']:.2f}; "
                 f"{s['cost_per_flop_ratio']:.2f}", f"<= {SEMI_COST_TARGET}",
                 s["cost_per_flop_ratio"] <= SEMI_COST_TARGET)]


CPU_STAGE_TARGET, BF16_SPEEDUP_TARGET, BF16_ERROR_POINTS, OUTSIDE_TARGET = 0.7, 2.5, 0.15, 0.10


def cpu_targets(c: dict) -> list[str]:
    isa = c["isa"]
    rows = [_row("processor", f"{isa['processor']} ({isa['torch_capability']}; bf16 matmuls: {isa['bf16_matmul']})",
                 "", None)]
    rows += [_row(f"{p} matmul peak ({c['threads']} threads)", f"{g:.0f} GFLOP/s", "", None)
             for p, g in c["peaks_gflops"].items()]
    for row in c["stages"]:
        fp32 = row["precision"] == "fp32"
        rows.append(_row(f"stage {row['stage']} {row['precision']}{', compiled step' if row['compiled'] else ''}: "
                         f"achieved / {row['precision']} peak (batch {c['batch_size']})",
                         f"{row['gflops']:.0f} GFLOP/s = {row['fraction_of_peak']:.2f}",
                         f"≥ {CPU_STAGE_TARGET}" if fp32 else "",
                         row["fraction_of_peak"] >= CPU_STAGE_TARGET if fp32 else None))
    q = c["quickstart"]
    for precision in ("fp32", "bf16"):
        if precision in q:
            o = q[precision]
            rows.append(_row(f"quickstart {precision}: everything but the model's math / wall",
                             f"{o['wall_seconds'] - o['compute_seconds']:.1f} s / {o['wall_seconds']:.1f} s = "
                             f"{o['non_compute_fraction']:.3f}", f"≤ {OUTSIDE_TARGET:.2f}",
                             o["non_compute_fraction"] <= OUTSIDE_TARGET))
    if "bf16" in q:
        rows.append(_row("quickstart compute: fp32 / bf16", f"{q['fp32']['compute_seconds']:.1f} s / "
                         f"{q['bf16']['compute_seconds']:.1f} s = {q['bf16_compute_speedup']:.2f}×",
                         f"≥ {BF16_SPEEDUP_TARGET}×", q["bf16_compute_speedup"] >= BF16_SPEEDUP_TARGET))
        gap = q["bf16"]["test_error"] - q["fp32"]["test_error"]
        rows.append(_row("quickstart test error: bf16 / fp32", f"{q['bf16']['test_error']:.2f} % / "
                         f"{q['fp32']['test_error']:.2f} % ({gap:+.2f} points)", f"within {BF16_ERROR_POINTS} points",
                         abs(gap) <= BF16_ERROR_POINTS))
    return rows


def cpu_details(c: dict) -> list[str]:
    lines = []
    for precision in ("fp32", "bf16"):
        if precision not in c["quickstart"]:
            continue
        lines += wall_split(c["quickstart"][precision], f" ({precision})")
    return lines


def wall_split(o: dict, title_suffix: str = "") -> list[str]:
    """A quickstart run's wall, part by part, the model's math first."""
    lines = ["", f"### Where quickstart's {o['wall_seconds']:.1f} s go{title_suffix}", "",
             "| part | seconds | share |", "|---|---|---|"]
    parts = sorted(o["parts"].items(), key=lambda kv: (not kv[0].startswith(("compute:", "encoding")), -kv[1]))
    for name, seconds in parts:
        label = f"compute: {name.split(':', 1)[1]}" if name.startswith("compute:") else LABELS.get(name, name)
        lines.append(f"| {label} | {seconds:.2f} | {seconds / o['wall_seconds']:.1%} |")
    lines.append(f"| (before the flow: Python imports, not in the wall above) | {o['import_seconds']:.2f} | |")
    return lines


def e2e_targets(e: dict) -> list[str]:
    n = e["pairs"]
    return [
        _row(f"end to end: `layerwise run {e['pipeline']}` / bare PyTorch script, whole processes "
             f"({n} pair{'s' if n > 1 else ''} alternated{', quick sizes' if e.get('quick') else ''})",
             f"{e['layerwise_seconds']:.1f} s / {e['bare_seconds']:.1f} s = {e['ratio']:.3f}",
             f"≤ {e['target']:.2f}", e["ratio"] <= e["target"]),
        _row("end to end: test error, layerwise / bare", f"{e['test_error']['layerwise']:.2f}% / "
             f"{e['test_error']['bare']:.2f}% ({'bit-identical' if e['identical_metrics'] else 'not identical'})",
             "same", abs(e["test_error"]["layerwise"] - e["test_error"]["bare"]) < 0.1)]


def _section_targets(r: dict) -> list[str]:
    rows = []
    k = r["kernels"]
    rows.append(_row(f"fp32 matmul peak ({k['threads']} threads)", f"{k['matmul_peak_gflops']:.0f} GFLOP/s", "", None))
    for stage in k["stages"]:  # one epoch from init; the target is on the CPU section's steady epochs
        rows.append(_row(f"stage {stage['stage']} first epoch achieved / peak (batch {k['batch_size']})",
                         f"{stage['gflops']:.0f} GFLOP/s = {stage['fraction_of_peak']:.2f}", "", None))
    for stage in k["stages"]:
        rows.append(_row(f"stage {stage['stage']} epoch: project loop / bare loop",
                         f"{stage['epoch_seconds']:.2f} s / {stage['bare_epoch_seconds']:.2f} s = "
                         f"{stage['overhead_ratio']:.3f}", "≤ 1.10", stage["overhead_ratio"] <= 1.10))
    o = r["orchestration"]
    rows.append(_row("quickstart: everything but compute (training, evaluation, encoding) / wall",
                     f"{o['wall_seconds'] - o['compute_seconds']:.1f} s / {o['wall_seconds']:.1f} s = "
                     f"{o['non_compute_fraction']:.3f}", "≤ 0.10", o["non_compute_fraction"] <= 0.10))
    u = r["reuse"]
    rows.append(_row("second quickstart: pretraining time / first run's",
                     f"{u['second_pretraining_seconds']:.2f} s / {u['first_pretraining_seconds']:.1f} s = "
                     f"{u['pretraining_fraction']:.4f}", "≤ 0.05", u["pretraining_fraction"] <= 0.05))
    rows.append(_row("second quickstart: wall / first run's", f"{u['wall_fraction']:.2f}", "", None))
    g = u["grid"]
    rows.append(_row(f"{g['cells']}-cell grid after quickstart: (pretrain once + grid wall) / (pretrain once + "
                     f"Σ fine-tunes)", f"{g['grid_vs_pretrain_once_plus_fine_tunes']:.2f} "
                     f"(grid pretraining {g['grid_pretraining_seconds']:.2f} s)", "", None))
    if r.get("data_sources"):
        rows += data_targets(r["data_sources"])
    m = r["memory"]
    for name, key in (("quickstart", "quickstart_peak_rss_mb"), ("label-ablation", "label_ablation_peak_rss_mb")):
        rows.append(_row(f"peak RSS, {name}", f"{m[key] / GIB_MB:.2f} GiB", "≤ 3 GiB", m[key] <= 3 * GIB_MB))
    rows.append(_row("peak RSS growth with training images", f"{m['mb_per_10k_images']:.0f} MB per 10k images "
                     f"(linear fit R² {m['fit_r2']:.3f})", "linear", m["fit_r2"] >= 0.95))
    return rows


def e2e_details(e: dict) -> list[str]:
    lines = ["", f"### End to end: `layerwise run {e['pipeline']}` against a bare PyTorch script (whole processes)", "",
             "Each run is a fresh process, timed from fork to exit; the layerwise one with a fresh sqlite MLflow "
             "store and LAYERWISE_WORKDIR (nothing reused) and its own temporary Prefect API. CPU: user + sys of "
             "the process and the children it reaped. Load: the 1-minute load average before → after.", "",
             "| # | command | wall s | CPU s | peak RSS MB | test error | kept epoch | load |", "|---|---|---|---|---|---|---|---|"]
    for r in e["runs"]:
        what = "bare_quickstart.py" if r["kind"] == "bare" else f"layerwise run {e['pipeline']}"
        lines.append(f"| {r['pair']} | {what} | {r['process_seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['test_error']:.4f}% | {r['best_epoch']} | "
                     f"{r['load_before']:.2f} → {r['load_after']:.2f} |")
    ratios = ", ".join(f"{x:.3f}" for x in e["pair_ratios"])
    lines += ["", f"Wall ratio per pair: {ratios}; CPU-time ratio {e['cpu_ratio']:.3f}. The layerwise process "
                  f"spends {e['layerwise_outside_flow_seconds']:.1f} s outside its flow (imports, the checks, the "
                  f"temporary Prefect API start, shutdown). Metrics "
                  f"{'bit-identical (test error, final recon losses, kept epoch)' if e['identical_metrics'] else 'differ: see the table'}"
                  f"{'' if e['repeatable'] else '; runs of the same kind differ between pairs'}."]
    return lines


def details(r: dict) -> list[str]:
    lines = _section_details(r) if "kernels" in r else []
    if "cpu" in r:
        lines += cpu_details(r["cpu"])
    if "e2e" in r:
        lines += e2e_details(r["e2e"])
    return lines


def _section_details(r: dict) -> list[str]:
    lines = wall_split(r["orchestration"])
    profile = r["kernels"].get("step_profile")
    if profile:
        peak = r["kernels"]["matmul_peak_gflops"]
        lines += ["", "### Profile of one 784→1000 training step (batch "
                  f"{r['kernels']['batch_size']}): what bounds it below the matmul peak", "",
                  "| optimizer | forward ms | backward ms | optimizer ms | GFLOP/s (of peak) | without the optimizer step |",
                  "|---|---|---|---|---|---|"]
        for name, prof in profile.items():
            ms = prof["ms_per_step"]
            lines.append(f"| {name} | {ms['forward']:.2f} | {ms['backward']:.2f} | {ms['optimizer']:.2f} | "
                         f"{prof['gflops']:.0f} ({prof['gflops'] / peak:.2f}) | {prof['gflops_without_optimizer']:.0f} "
                         f"({prof['gflops_without_optimizer'] / peak:.2f}) |")
    s = r["scaling"]
    lines += ["", "### Scaling (784→1000 stage, one epoch, validation included)", "",
              "| images | epoch s | µs / image |", "|---|---|---|"]
    lines += [f"| {row['images']} | {row['epoch_seconds']:.2f} | {row['us_per_image']:.1f} |" for row in s["by_size"]]
    lines += ["", "| batch size | epoch s | GFLOP/s |", "|---|---|---|"]
    lines += [f"| {row['batch_size']} | {row['epoch_seconds']:.2f} | {row['gflops']:.0f} |" for row in s["by_batch"]]
    lines += ["", "| ablation workers × torch threads | 4-cell grid wall s |", "|---|---|"]
    lines += [f"| {row['workers']} × {row['threads_per_worker']} | {row['wall_seconds']:.1f} |"
              for row in s["ablation_workers"]]
    m = r["memory"]
    lines += ["", "### Peak RSS against training images (1 epoch per stage)", "", "| images | peak RSS MB |",
              "|---|---|"]
    lines += [f"| {row['images']} | {row['peak_rss_mb']:.0f} |" for row in m["by_images"]]
    return lines


def _load(r: dict) -> str:
    if "load_before" not in r:
        return ""
    return (f"; load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in r['load_before'])} before, "
            f"{', '.join(f'{x:.2f}' for x in r['load_after'])} after")


def markdown(r: dict) -> str:
    machine = r["machine"]
    head = [f"## layerwise benchmarks — {machine['cpus']} CPU cores, {'a GPU' if machine['gpu'] else 'no GPU'}, "
            f"torch {machine['torch']}{' (quick mode)' if r.get('quick') else ''}",
            f"Run {r['started']}{' at ' + r['commit'] if r.get('commit') else ''}, {r['bench_seconds'] / 60:.1f} min"
            f"{_load(r)}.", ""]
    return "\n".join(head + targets(r) + details(r)) + "\n"
