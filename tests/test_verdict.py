"""The verdict (byol/report/verdict.py): margins with a paired 95% interval over the test rows
(byol/evaluate/paired.py), each feature set's best probe picked on validation, the stronger of the
two starting-weights controls, and wording that calls noise noise."""
import numpy as np
import pytest

from byol.evaluate.paired import match_rows, paired_difference
from byol.report.verdict import verdict

N = 4000


def correctness(n: int, accuracy: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < accuracy


def shifted(base: np.ndarray, points: float, seed: int, churn: float = 5.0) -> np.ndarray:
    """`base` with `churn` + max(points, 0) % of all rows turned from wrong to right and `churn` + max(-points, 0) %
    from right to wrong: a known paired difference of `points`, with the disagreements two real probes have."""
    out, rng, n = base.copy(), np.random.default_rng(seed), len(base)
    gain = rng.choice(np.flatnonzero(~base), int(round((churn + max(points, 0)) / 100 * n)), replace=False)
    loss = rng.choice(np.flatnonzero(base), int(round((churn + max(-points, 0)) / 100 * n)), replace=False)
    out[gain], out[loss] = True, False
    return out


def test_the_interval_covers_the_true_difference_and_shrinks_with_more_rows():
    widths = []
    for n in (1000, 10000):
        b = correctness(n, 0.4, seed=n)
        a = shifted(b, 5.0, seed=n + 1, churn=0.0)
        d = paired_difference(a, b)
        assert d["difference"] == pytest.approx(5.0, abs=0.05)
        assert d["low"] < 5.0 < d["high"] and d["low"] > 0
        widths.append(d["high"] - d["low"])
    assert widths[1] < widths[0] / 2          # ~1/sqrt(n): 10x the rows, ~3x narrower
    assert paired_difference(a, b) == paired_difference(a, b)      # seeded: the same interval every time


def test_pairing_is_by_dataset_item_not_by_position():
    items_a, correct_a = np.array([5, 3, 9, 1]), np.array([True, False, True, False])
    items_b, correct_b = np.array([1, 9, 3, 7]), np.array([True, False, True, True])
    a, b = match_rows(items_a, correct_a, items_b, correct_b)
    assert a.tolist() == [False, False, True] and b.tolist() == [True, True, False]    # items 1, 3, 9
    with pytest.raises(ValueError, match="no common test item"):
        match_rows(np.array([1]), np.array([True]), np.array([2]), np.array([True]))


def result(tmp_path, name: str, correct: np.ndarray, val_top1: float, items=None) -> dict:
    """A probe's result JSON as the evaluation writes it, with its predictions file."""
    items = np.arange(len(correct)) if items is None else items
    truth = np.zeros(len(correct), np.int64)
    rows = np.stack([items, truth, np.where(correct, 0, 1)], axis=1)
    path = tmp_path / f"{name}-predictions.npy"
    np.save(path, rows)
    return {"top1": 100.0 * correct.mean(), "selection": {"on": "validation", "val_top1": [val_top1 - 1, val_top1]},
            "predictions_npy": str(path)}


def results_for(tmp_path, byol_points: float, pixels_points: float = -10.0) -> dict:
    start = correctness(N, 0.40, seed=1)
    byol, pixels = shifted(start, byol_points, seed=2), shifted(start, pixels_points, seed=3)
    return {"knn": result(tmp_path, "knn", byol, 50.0), "logreg": result(tmp_path, "logreg", byol, 40.0),
            "start-knn": result(tmp_path, "start-knn", start, 45.0),
            "start-logreg": result(tmp_path, "start-logreg", start, 30.0),
            "pca-knn": result(tmp_path, "pca-knn", pixels, 30.0)}


def test_a_clear_gain_is_helped_with_its_interval_in_the_sentence(tmp_path):
    v = verdict(results_for(tmp_path, 6.0))
    assert v["helped"] and not v["hurt"] and v["sentence"].startswith("Pretraining helped:")
    low, high = v["interval_over_start"]
    assert v["margin_over_start"] == pytest.approx(6.0, abs=0.01) and 0 < low < 6.0 < high
    assert f"95% interval {low:+.1f} to {high:+.1f}" in v["sentence"]
    assert "train longer" not in v["sentence"]


def test_a_tie_is_no_measurable_difference(tmp_path):
    v = verdict(results_for(tmp_path, 0.1))          # +0.1 point on 4,000 rows: inside the noise
    low, high = v["interval_over_start"]
    assert low < 0 < high and not v["helped"] and not v["hurt"]
    assert v["sentence"].startswith("No measurable difference from its starting weights yet:")


def test_a_clear_loss_is_hurt(tmp_path):
    v = verdict(results_for(tmp_path, -5.0))
    assert v["hurt"] and v["interval_over_start"][1] < 0
    assert v["sentence"].startswith("Pretraining hurt:") and "5.0 points below its starting weights'" in v["sentence"]


def test_each_sets_best_probe_is_picked_on_validation_not_on_test(tmp_path):
    res = results_for(tmp_path, 6.0)
    res["logreg"]["top1"] = 99.0                     # the best on test, but worse on validation (40 < 50)
    v = verdict(res)
    assert v["byol"]["key"] == "knn" and v["start"]["key"] == "start-knn"


def test_the_stronger_control_on_validation_is_the_bar(tmp_path):
    res = results_for(tmp_path, 6.0)
    stronger = correctness(N, 0.40, seed=1)
    stronger = shifted(stronger, 6.0, seed=2)        # measured BN statistics: as good as BYOL
    res["start-bn-knn"] = result(tmp_path, "start-bn-knn", stronger, 60.0)
    v = verdict(res)
    assert v["start"]["key"] == "start-bn-knn" and v["margin_over_start"] == 0.0
    assert not v["helped"] and "measured BN statistics" in v["sentence"]


def test_without_predictions_the_margin_alone_decides_and_no_interval_is_shown():
    v = verdict({"knn": {"top1": 60.0}, "start-knn": {"top1": 50.0}, "pca-knn": {"top1": 40.0}})
    assert v["interval_over_start"] is None and v["helped"] and "interval" not in v["sentence"]


def test_verdict_without_the_control_says_so():
    v = verdict({"logreg": {"top1": 80.0}, "knn": {"top1": 82.0}, "pca-logreg": {"top1": 70.0},
                 "pca-knn": {"top1": 71.0}})
    assert v["margin_over_start"] is None and v["margin_over_pixels"] == 11.0
    assert "control is missing" in v["sentence"] and not v["helped"]
