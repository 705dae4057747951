"""The ablation's table and figure: the published reference points drawn beside a grid, those that
use unlabelled images only where the grid has an unlabelled objective."""
import pandas as pd
import pytest

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


def test_each_row_is_paired_by_seed_with_its_control_and_a_t_interval():
    """Differences by hand: pretrained - scratch per seed is 1, 2, 3 (mean 2, sd 1); the 95 %
    interval is 2 -+ t(0.975, 2) / sqrt(3) with t(0.975, 2) = 4.302653 (a t table). An objective's
    row is compared with its plain start, and pretrained+objective with scratch+objective too."""
    from layerwise.report.tables import paired_frame, paired_markdown, results_frame

    rows = []
    for seed, (pre, scr, pre_u, scr_u) in enumerate([(10, 9, 4, 6), (10, 8, 3, 6), (10, 7, 3, 5)]):
        for init, error in (("pretrained", pre), ("scratch", scr), ("pretrained+virtual_adversarial", pre_u),
                            ("scratch+virtual_adversarial", scr_u)):
            rows.append({"labels": 100, "seed": seed, "init": init, "test_error": float(error), "test_accuracy": 0.0,
                         "best_epoch": 1.0, "train_seconds": 1.0, "run_id": "r", "trained_by": "r"})
    paired = paired_frame(results_frame(rows)).set_index(["method", "control"])
    first = paired.loc[("pretrained", "scratch")]
    half = 4.302653 / 3 ** 0.5
    assert first["mean_diff"] == pytest.approx(2.0) and first["n"] == 3
    assert (first["ci_low"], first["ci_high"]) == (pytest.approx(2 - half, rel=1e-5), pytest.approx(2 + half, rel=1e-5))
    assert paired.loc[("pretrained+virtual_adversarial", "pretrained")]["mean_diff"] == pytest.approx(-20 / 3)
    assert paired.loc[("pretrained+virtual_adversarial", "scratch+virtual_adversarial")]["mean_diff"] == pytest.approx(-7 / 3)
    assert paired.loc[("scratch+virtual_adversarial", "scratch")]["mean_diff"] == pytest.approx(-7 / 3)
    assert len(paired) == 4  # scratch has no control
    text = paired_markdown(paired.reset_index())
    assert "| 100 | pretrained − scratch | +2.00 | [-0.48, +4.48] | 3 |" in text
