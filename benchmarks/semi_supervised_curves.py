"""Validation error against steps and seconds of an unlabelled-ablation run's cells (issue 28's curve):
python -m benchmarks.semi_supervised_curves STORE_URI OUT.png [STEPS_PER_EPOCH]. The validation error is
what the cells report every tenth of their epochs (keep: last: it chooses nothing)."""
import sys

from mlflow.tracking import MlflowClient
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
c = MlflowClient(sys.argv[1])
per_epoch = int(sys.argv[3]) if len(sys.argv) > 3 else 4  # 100 labels, batch 32
exp = c.get_experiment_by_name("unlabelled-ablation")
runs = c.search_runs([exp.experiment_id], "tags.`layerwise.stage` = 'finetune'")
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
rows = []
for r in sorted(runs, key=lambda r: (r.data.tags.get("layerwise.method"), r.data.tags.get("layerwise.seed"))):
    method, seed = r.data.tags.get("layerwise.method"), r.data.tags.get("layerwise.seed")
    hist = sorted(c.get_metric_history(r.info.run_id, "val_accuracy"), key=lambda m: m.step)
    t0 = r.info.start_time
    steps = [per_epoch * m.step for m in hist]
    secs = [(m.timestamp - t0) / 1000 for m in hist]
    err = [100 * (1 - m.value) for m in hist]
    final = err[-1]
    reach = next((s for s, e, t in zip(steps, err, secs) if e <= 2 * final), None)
    reach_s = next((t for s, e, t in zip(steps, err, secs) if e <= 2 * final), None)
    rows.append((method, seed, r.data.metrics.get("test_error"), final, reach, reach_s, secs[-1], list(zip(steps, [round(e, 2) for e in err]))))
    for ax, xs in zip(axes, (steps, secs)):
        ax.plot(xs, err, "o-", markersize=3, label=f"{method} seed {seed}")
for ax, label in zip(axes, ("step (32 labelled + 128 unlabelled images)", "seconds since the cell started (one core)")):
    ax.axhline(2.0, color="black", linestyle=":", label="target 2 %")
    ax.set_xlabel(label); ax.set_ylabel("validation error % (reported only)"); ax.set_ylim(0, 40); ax.grid(alpha=.3)
axes[1].legend(fontsize=7)
fig.suptitle("unlabelled-ablation as shipped, 100 labels: validation error against steps and seconds, 3 seeds")
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=110)
for row in rows: print(row[:7]); print("  ", row[7])
