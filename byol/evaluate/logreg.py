"""Logistic regression on standardised (or PCA-projected) features, C chosen on validation.

Exact scikit-learn LogisticRegression(solver="lbfgs") needs the training matrix in memory: this
module builds it block by block (already standardised / projected, float32, rows outside the
validation split first so the selection fits use a view, not a copy) when the estimate
`lbfgs_bytes` fits under --max-memory-mb; for pca-logreg that is N x 128. Otherwise it falls back
to scikit-learn's SGDClassifier(loss="log_loss") fed shuffled row blocks with `partial_fit`
(one-vs-rest logistic regression, L2 penalty alpha = 1 / (C x n) as LogisticRegression's C means;
C and the number of passes chosen on validation). Only a shuffle buffer (~64 MB) is in memory and
torch is never imported, so the process stays small. The JSON says which ran (`solver`, `streams`).
"""
from __future__ import annotations

import warnings
from functools import partial
from typing import Callable

import numpy as np

from byol.evaluate.blocks import iter_rows, progress
from byol.evaluate.passes import Scorer, epoch_rng, run_epochs, score_blocks, shuffled_epoch, validation_scores
from byol.evaluate.results import accuracy


def lbfgs_bytes(n: int, d: int, n_classes: int) -> int:
    """Estimated memory of an in-memory lbfgs fit: the float32 matrix plus scikit-learn's per-row
    float64 work arrays (raw predictions, gradients, weights), with 20% slack."""
    return int(1.2 * (n * d * 4 + n * n_classes * 8 * 3 + n * 8 * 4))


def load_matrix(data, transform: Callable, out_dim: int, block_rows: int):
    """(X [n_train, out_dim] float32, class positions [n_train], n_fit): labelled training rows,
    transformed, the n_fit rows outside the validation split first."""
    n_fit, n_train = int(data.fit_mask.sum()), int(data.train_mask.sum())
    x = np.empty((n_train, out_dim), np.float32)
    y = np.empty(n_train, np.int64)
    # A row's slot: fit rows count up from 0, validation rows from n_fit, in store order.
    slot = np.full(data.train.n_rows, -1, np.int64)
    slot[data.fit_mask] = np.arange(n_fit)
    slot[data.val_mask] = n_fit + np.arange(n_train - n_fit)
    offset = 0
    with progress(data.train.n_rows, "load train") as bar:
        for block in iter_rows(data.train, None, block_rows, bar=bar):
            n = len(block["labels"])
            rows = slot[offset:offset + n]
            keep = rows >= 0
            if keep.any():
                x[rows[keep]] = transform(block["embeddings"][keep])
                y[rows[keep]] = data.encode(block["labels"][keep])
            offset += n
    return x, y, n_fit


def fit_lbfgs(x: np.ndarray, y: np.ndarray, C: float, max_iter: int, seed: int = 0):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # reported as "converged" in the JSON
        model.fit(x, y)
    return model


def class_proba(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with one column per training class (a class absent from the fit scores 0)."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def class_scorer(model, n_classes: int) -> Scorer:
    """The fitted model as a scorer for byol.evaluate.passes: embeddings [n, d] -> class_proba [n, n_classes]."""
    return partial(class_proba, model, n_classes=n_classes)


def score_test_rows(model, data, opts, transform: Callable):
    """(probabilities [n, C], true labels [n]) of the test rows, block by block (a lazy iterator)."""
    return score_blocks(class_scorer(model, data.n_classes), data.test, data.test_mask, opts.block_rows,
                        transform, "test")


def evaluate_logreg(data, opts, transform: Callable, method: str = "logreg"):
    """Returns (iterator of (probabilities [n, C], true labels [n]) over test blocks, info)."""
    out_dim = getattr(transform, "out_dim", data.train.dim)
    need = lbfgs_bytes(int(data.train_mask.sum()), out_dim, data.n_classes)
    budget = int(opts.max_memory_mb * 2**20)
    if need > budget:
        return _streaming(data, opts, transform, need, budget)
    x, y, n_fit = load_matrix(data, transform, out_dim, opts.block_rows)
    if opts.C is not None:
        C, selection = opts.C, {"on": "flag"}
    elif n_fit < len(y):
        scores = []
        for c in opts.C_grid:
            model = fit_lbfgs(x[:n_fit], y[:n_fit], c, opts.max_iter, opts.seed)
            scores.append(accuracy(class_proba(model, x[n_fit:], data.n_classes), y[n_fit:]))
        C = opts.C_grid[int(np.argmax(scores))]
        selection = {"on": "validation", "grid": list(opts.C_grid), "val_top1": scores}
    else:
        C, selection = 1.0, {"on": "default (no validation split)"}
    model = fit_lbfgs(x, y, C, opts.max_iter, opts.seed)
    del x, y
    info = {"solver": "lbfgs", "streams": False, "selected": {"C": C}, "selection": selection,
            "max_iter": opts.max_iter, "n_iter": int(np.max(model.n_iter_)),
            "converged": bool(np.max(model.n_iter_) < opts.max_iter), "memory_estimate_mb": need / 2**20}
    return score_test_rows(model, data, opts, transform), info


def _sgd(C: float, n: int, seed: int):
    from sklearn.linear_model import SGDClassifier
    return SGDClassifier(loss="log_loss", alpha=1.0 / (C * max(n, 1)), random_state=seed)


def _sgd_epoch(model, data, mask: np.ndarray, opts, epoch: int, transform: Callable) -> None:
    """One partial_fit pass over the selected rows, in shuffled blocks (seeded per epoch)."""
    classes = np.arange(data.n_classes)      # partial_fit needs them all: a buffer may lack some
    rng = epoch_rng(opts.seed, epoch)
    for chunk in shuffled_epoch(data.train, mask, opts.block_rows, rng, transform, f"sgd pass {epoch + 1}"):
        model.partial_fit(chunk["embeddings"], data.encode(chunk["labels"]), classes=classes)
        del chunk          # free this shuffle buffer before the next one is read


def _fit_sgd(C: float, n: int, data, mask: np.ndarray, epochs: int, opts, transform: Callable,
             validate: bool = False) -> tuple[object, list[float]]:
    """(model after `epochs` passes over the mask's n rows, validation top-1 % after each pass if validate)."""
    model = _sgd(C, n, opts.seed)

    def on_validation() -> tuple[float, float]:
        return validation_scores(class_scorer(model, data.n_classes), data, opts.block_rows, transform)

    curve = run_epochs(lambda epoch: _sgd_epoch(model, data, mask, opts, epoch, transform), epochs,
                       on_validation if validate else None)
    return model, [top1 for top1, _ in curve]


def _streaming(data, opts, transform: Callable, need: int, budget: int):
    """Logistic regression by SGD over shuffled blocks: (C, passes) chosen on validation, then refit."""
    n_fit, n_train = int(data.fit_mask.sum()), int(data.train_mask.sum())
    grid = [opts.C] if opts.C is not None else list(opts.C_grid)
    if data.val_mask.any():
        curves = {C: _fit_sgd(C, n_fit, data, data.fit_mask, opts.epochs, opts, transform, validate=True)[1]
                  for C in grid}
        C, epochs = max(((c, e + 1) for c in grid for e in range(opts.epochs)),
                        key=lambda ce: (curves[ce[0]][ce[1] - 1], -ce[1]))
        selection = {"on": "validation", "grid": grid, "max_passes": opts.epochs,
                     "val_top1": {str(c): v for c, v in curves.items()}}
    else:
        C, epochs = grid[0] if opts.C is not None else 1.0, opts.epochs
        selection = {"on": "flag (no validation split)"}
    model, _ = _fit_sgd(C, n_train, data, data.train_mask, epochs, opts, transform)
    info = {"solver": "streaming SGD logistic regression (scikit-learn SGDClassifier, log_loss, one-vs-rest)",
            "streams": True, "selected": {"C": C, "passes": epochs}, "selection": selection,
            "memory_estimate_mb": need / 2**20,
            "note": f"lbfgs would need ~{need / 2**20:.0f} MB > --max-memory-mb {budget / 2**20:.0f}"}
    return score_test_rows(model, data, opts, transform), info
