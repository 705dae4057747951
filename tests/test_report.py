"""The ablation's table and figure: the published reference points drawn beside a grid, those that
use unlabelled images only where the grid has an unlabelled objective."""
import pandas as pd

from layerwise.report.anchors import UNLABELLED_ERRORS
from layerwise.report.tables import plot_ablation, reference_points, results_frame, summary_frame, summary_markdown


def _results(inits):
    rows = [{"labels": labels, "seed": seed, "init": init, "test_error": 10.0 + seed + (labels == 100) * 5,
             "test_accuracy": 0.9, "best_epoch": 1, "train_seconds": 1.0, "run_id": "r", "trained_by": "r"}
            for labels in (100, 1000) for seed in (0, 1) for init in inits]
    return results_frame(rows)


def test_unlabelled_anchors_only_beside_an_unlabelled_objective(tmp_path):
    plain = summary_frame(_results(["pretrained", "scratch"]))
    mixed = summary_frame(_results(["pretrained", "scratch", "pretrained+pseudo_label"]))
    assert not any("Lee" in name for name, _, _ in reference_points(["pretrained", "scratch"], True))
    names = [name for name, _, _ in reference_points(["pretrained", "pretrained+pseudo_label"], True)]
    assert all(name in names for name in UNLABELLED_ERRORS)
    assert reference_points(["pretrained+pseudo_label"], anchors=False) == []
    assert "Lee 2013" not in summary_markdown(plain, "t") and "10.49 at 100" in summary_markdown(mixed, "t")
    assert "gain pretrained+pseudo_label − scratch" in summary_markdown(mixed, "t")
    assert isinstance(mixed, pd.DataFrame) and plot_ablation(mixed, tmp_path / "a.png", "t").stat().st_size > 1000
