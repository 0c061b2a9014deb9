"""Did pretraining help? The report's one-sentence answer, with each margin's 95% interval.

Three feature sets get the same two probes (logistic regression and kNN, every hyper-parameter
chosen on a validation split of train): BYOL's encoder, the encoder training started from
(RUN_DIR/encoder-start.pt: the seeded random init, or the `network.fine_tune_from` weights; and,
where it was written, the same weights with batch-norm statistics measured on the training images,
encoder-start-bn.pt, often the stronger control) and raw pixels (PCA first). Each set's best probe
is picked on the *validation* split (never on test); the verdict compares the sets' best probes
like with like: the MLP and linear heads, trained on BYOL's features only, stay out of the margins
so that a richer probe cannot pass for better features. A random network's features are far above
chance on small images, so the starting weights, not chance, are the bar that says what pretraining
added.

Each margin comes with a 95% interval from a paired bootstrap over the test rows both probes scored
(byol.evaluate.paired). "Helped" needs the interval above 0 for the starting weights and the pixels,
"hurt" an interval below 0; otherwise the sentence says there is no measurable difference. The
interval covers the test set's sampling, not run-to-run variation between seeds.

    verdict({"logreg": result_json, "knn": ..., "start-logreg": ..., ...}) -> {"sentence": ..., margins ...}
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from byol.evaluate.paired import match_rows, paired_difference

PROBES = {  # feature set -> {result key: probe name}
    "byol": {"logreg": "logistic regression", "knn": "kNN"},
    "start": {"start-logreg": "logistic regression", "start-knn": "kNN",
              "start-bn-logreg": "logistic regression, measured BN statistics",
              "start-bn-knn": "kNN, measured BN statistics"},
    "pixels": {"pca-logreg": "PCA + logistic regression", "pca-knn": "PCA + kNN"},
}
ADVICE = ("train longer (more steps, or trainer.max_time for the time you have) or on a GPU, then rerun; "
          "the margins are on the test split")


def validation_top1(result: dict) -> float | None:
    """The validation top-1 (%) of the hyper-parameter a probe chose (None: chosen without validation)."""
    selection = result.get("selection") or {}
    if "best_val_top1" in selection:
        return float(selection["best_val_top1"])
    scores = selection.get("val_top1")
    if isinstance(scores, dict):                       # streaming logistic regression: a curve per C
        scores = [v for curve in scores.values() for v in curve]
    return float(max(scores)) if scores else None


def best_probe(results: dict[str, dict], kind: str) -> dict | None:
    """{"key", "probe", "top1", "val_top1"} of the feature set's probe with the best validation top-1
    (test top-1 only breaks a tie or stands in where no probe has a validation score); None: no row."""
    rows = [(key, r) for key, r in results.items() if key in PROBES[kind] and r.get("top1") is not None]
    if not rows:
        return None
    key, r = max(rows, key=lambda kr: (validation_top1(kr[1]) if validation_top1(kr[1]) is not None else -1.0,
                                       kr[1]["top1"], kr[0]))      # the key: the same pick in any dict order
    return {"key": key, "probe": PROBES[kind][key], "top1": float(r["top1"]), "val_top1": validation_top1(r),
            "predictions_npy": r.get("predictions_npy")}


def _correct(probe: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(dataset items, per-row correctness) from a probe's predictions file, or None without one."""
    path = probe.get("predictions_npy")
    if not path or not Path(path).is_file():
        return None
    rows = np.load(path)                          # int64 [n, 3]: item, true label, predicted label
    return rows[:, 0], rows[:, 1] == rows[:, 2]


def margin(byol: dict, other: dict) -> dict:
    """BYOL's best minus another set's best, in points, with its paired 95% interval where both probes
    left per-row predictions on shared test items (else interval None)."""
    out = {"margin": round(byol["top1"] - other["top1"], 2), "low": None, "high": None}
    a, b = _correct(byol), _correct(other)
    if a is not None and b is not None:
        try:
            ca, cb = match_rows(a[0], a[1], b[0], b[1])
        except ValueError:
            return out
        diff = paired_difference(ca, cb)
        out.update(low=round(diff["low"], 2), high=round(diff["high"], 2), n_paired=diff["n"])
    return out


def _interval(m: dict) -> str:
    return "" if m["low"] is None else f"; 95% interval {m['low']:+.1f} to {m['high']:+.1f}"


def _comparison(byol: dict, other: dict, m: dict, whose: str) -> str:
    where = f"{whose} best ({other['probe']}, {other['top1']:.1f}%{_interval(m)})"
    points = f"{abs(m['margin']):.1f} point{'' if round(abs(m['margin']), 1) == 1 else 's'}"
    if m["margin"] > 0:
        return f"{points} above {where}"
    if m["margin"] == 0:
        return f"equal to {where}"
    return f"{points} below {where}"


def _sign(m: dict | None) -> int:
    """+1: above 0 beyond noise (interval above 0; without an interval, the margin alone), -1 below, 0: neither."""
    if m is None:
        return 0
    low, high = (m["low"], m["high"]) if m["low"] is not None else (m["margin"], m["margin"])
    return 1 if low > 0 else (-1 if high < 0 else 0)


def verdict(results: dict[str, dict]) -> dict:
    """The verdict on a run from its probes' result JSONs (top1, selection, predictions_npy): a sentence
    and the margins behind it. margin_over_start / margin_over_pixels: BYOL's best probe minus that
    set's best, in points, with `interval_*` [low, high] (None where that set has no row or no
    predictions); `helped` is True only when both intervals lie above 0."""
    byol, start, pixels = (best_probe(results, kind) for kind in PROBES)
    out = {"byol": byol, "start": start, "pixels": pixels, "margin_over_start": None,
           "margin_over_pixels": None, "interval_over_start": None, "interval_over_pixels": None,
           "helped": False, "hurt": False}
    if byol is None:
        out["sentence"] = "No verdict: BYOL's features have no probe result (logistic regression or kNN) yet."
        return out
    margins = {name: margin(byol, other) for name, other in (("start", start), ("pixels", pixels)) if other}
    for name, m in margins.items():
        out[f"margin_over_{name}"] = m["margin"]
        out[f"interval_over_{name}"] = None if m["low"] is None else [m["low"], m["high"]]
    lead = f"BYOL's best probe ({byol['probe']}, {byol['top1']:.1f}%) is"
    parts = [_comparison(byol, other, margins[name], whose) for name, other, whose in
             (("start", start, "its starting weights'"), ("pixels", pixels, "raw pixels'")) if other]
    detail = f"{lead} {' and '.join(parts)}." if parts else f"{lead} the only result."
    if start is None:
        out["sentence"] = ("The starting-weights control is missing (no RUN_DIR/encoder-start.pt: this run was "
                           "trained before byol wrote one), so this report cannot say what pretraining added; "
                           f"retrain to get it. {detail}")
        return out
    over_start, over_pixels = _sign(margins["start"]), _sign(margins.get("pixels"))
    if over_start > 0 and (pixels is None or over_pixels > 0):
        out["helped"], head = True, "Pretraining helped:"
    elif over_start > 0:
        head = "Pretraining helped over its starting weights, but the features do not beat raw pixels:"
    elif over_start < 0:
        out["hurt"], head = True, "Pretraining hurt: the features are worse than its starting weights'."
    else:
        head = "No measurable difference from its starting weights yet:"
    tail = "" if out["helped"] else f" To improve it, {ADVICE}."
    out["sentence"] = f"{head} {detail}{tail}"
    return out
