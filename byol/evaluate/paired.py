"""How sure is a difference in top-1? A paired bootstrap over the test rows both probes scored.

Two probes (say BYOL + kNN and its starting weights + kNN) predict the same test images. Their
difference in top-1 is the mean of d_i = correct_a[i] - correct_b[i] over the n rows; resampling
the rows with replacement (the same rows for both: paired) B times gives the spread of that mean
that the finite test set alone causes, and its 2.5th and 97.5th percentiles the 95% interval
(Efron & Tibshirani 1993, the percentile interval). Pairing matters: the two probes succeed and
fail on largely the same images, so the interval of the difference is much narrower than the two
accuracies' own intervals would suggest.

The interval covers the test set's sampling only, not what another seed or another run would give.

Rows are matched by dataset item (`indices` in the feature stores), never by position, so two
stores written in different orders still pair the same image.
"""
from __future__ import annotations

import numpy as np

RESAMPLES = 2000
CHUNK = 100          # resamples drawn at once: CHUNK x n int64 indices stay a few MB for 10,000 rows


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = RESAMPLES,
                      seed: int = 0, level: float = 0.95) -> dict:
    """bool [n] per-row correctness of two probes on the same rows -> {"difference", "low", "high", "n"}
    in points (%), a minus b; the interval is the bootstrap's central `level` range (seeded: the same
    inputs always give the same interval)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equally long, non-empty 1-d arrays of per-row correctness, got "
                         f"{a.shape} and {b.shape}")
    d = a.astype(np.int8) - b.astype(np.int8)                     # -1, 0, +1 per row
    rng, means = np.random.default_rng(seed), []
    for start in range(0, resamples, CHUNK):
        rows = rng.integers(0, len(d), size=(min(CHUNK, resamples - start), len(d)))
        means.append(d[rows].mean(axis=1))
    means = np.concatenate(means) * 100.0
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"difference": float(d.mean() * 100.0), "low": float(low), "high": float(high), "n": int(len(d)),
            "level": level, "resamples": resamples}


def match_rows(items_a: np.ndarray, correct_a: np.ndarray, items_b: np.ndarray,
               correct_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row correctness of two probes restricted to the dataset items both scored, in one order.
    Raises ValueError when they share no item (different test sets cannot be paired)."""
    items_a, items_b = np.asarray(items_a, np.int64), np.asarray(items_b, np.int64)
    common, ia, ib = np.intersect1d(items_a, items_b, assume_unique=False, return_indices=True)
    if not len(common):
        raise ValueError("the two probes scored no common test item: they cannot be compared row by row")
    return np.asarray(correct_a, bool)[ia], np.asarray(correct_b, bool)[ib]
