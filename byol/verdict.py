"""Did pretraining help? The report's one-sentence answer, from the probes' test top-1.

Three feature sets get the same two probes (logistic regression and kNN, every hyper-parameter
chosen on a validation split of train): BYOL's encoder, the encoder training started from
(RUN_DIR/encoder-start.pt: the seeded random init, or the `network.fine_tune_from` weights) and
raw pixels (PCA first). The verdict compares each set's best of those probes, like with like: the
MLP and linear heads, trained on BYOL's features only, stay out of the margins so that a richer
probe cannot pass for better features. A random network's features are far above chance on small
images (the README's CIFAR-10 checks: ~39% linear), so the starting weights, not chance, are the
bar that says what pretraining added.

    verdict({"logreg": 95.0, "knn": 96.1, "start-logreg": 91.2, ...}) -> {"sentence": ..., margins ...}
"""
from __future__ import annotations

PROBES = {  # feature set -> {result key: probe name}
    "byol": {"logreg": "logistic regression", "knn": "kNN"},
    "start": {"start-logreg": "logistic regression", "start-knn": "kNN"},
    "pixels": {"pca-logreg": "PCA + logistic regression", "pca-knn": "PCA + kNN"},
}
ADVICE = ("train longer (more steps, or trainer.max_time for the time you have) or on a GPU, then rerun; "
          "the margins are on the test split")


def best_probe(top1: dict[str, float], kind: str) -> dict | None:
    """{"key", "probe", "top1"} of the feature set's best probe, or None when it has no row."""
    rows = [(top1[key], key) for key in PROBES[kind] if top1.get(key) is not None]
    if not rows:
        return None
    value, key = max(rows)
    return {"key": key, "probe": PROBES[kind][key], "top1": float(value)}


def _points(margin: float) -> str:
    return f"{abs(margin):.1f} point{'' if round(abs(margin), 1) == 1 else 's'}"


def _comparison(byol: dict, other: dict, whose: str) -> str:
    margin = byol["top1"] - other["top1"]
    where = f"{whose} best ({other['probe']}, {other['top1']:.1f}%)"
    if margin > 0:
        return f"{_points(margin)} above {where}"
    if margin == 0:
        return f"no better than {where}: equal"
    return f"{_points(margin)} below {where}"


def verdict(top1: dict[str, float]) -> dict:
    """The verdict on a run from its probes' top-1 (%): a sentence and the margins behind it.

    margin_over_start / margin_over_pixels = BYOL's best probe minus that set's best probe, in
    points (None where that set has no row); `helped` is True only when both margins are > 0.
    """
    byol, start, pixels = (best_probe(top1, kind) for kind in PROBES)
    out = {"byol": byol, "start": start, "pixels": pixels, "margin_over_start": None,
           "margin_over_pixels": None, "helped": False}
    if byol is None:
        out["sentence"] = "No verdict: BYOL's features have no probe result (logistic regression or kNN) yet."
        return out
    if start is not None:
        out["margin_over_start"] = round(byol["top1"] - start["top1"], 2)
    if pixels is not None:
        out["margin_over_pixels"] = round(byol["top1"] - pixels["top1"], 2)
    lead = f"BYOL's best probe ({byol['probe']}, {byol['top1']:.1f}%) is"
    parts = []
    if start is not None:
        parts.append(_comparison(byol, start, "its starting weights'"))
    if pixels is not None:
        parts.append(_comparison(byol, pixels, "raw pixels'"))
    detail = f"{lead} {' and '.join(parts)}." if parts else f"{lead} the only result."
    over_start, over_pixels = out["margin_over_start"], out["margin_over_pixels"]
    if start is None:
        head = ("The starting-weights control is missing (no RUN_DIR/encoder-start.pt: this run was trained "
                "before byol wrote one), so this report cannot say what pretraining added; retrain to get it.")
        out["sentence"] = f"{head} {detail}"
        return out
    if over_start > 0 and (over_pixels is None or over_pixels > 0):
        out["helped"] = True
        head = "Pretraining helped:"
    elif over_start > 0:
        head = "Pretraining helped over its starting weights, but the features do not beat raw pixels yet:"
    else:
        head = "Pretraining has not helped yet:"
    tail = "" if out["helped"] else f" To improve it, {ADVICE}."
    out["sentence"] = f"{head} {detail}{tail}"
    return out
