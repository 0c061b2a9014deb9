"""The passes over a store's selected rows that every trained classifier makes: a shuffled training
epoch, scoring block by block, and the validation figures after each epoch.

Both solvers that learn by epochs (the numpy heads of byol.evaluate.training, the streaming SGD
logistic regression of byol.evaluate.logreg) and every test figure go through these functions, so
they seed, shuffle, score and select the same way. A model enters as a *scorer*: a function from a
block's (transformed) embeddings [n, d] to class probabilities [n, C], columns in class-position
order (data.encode's positions).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from byol.evaluate.blocks import SHUFFLE_BLOCK_BYTES, SHUFFLE_BLOCKS, iter_rows, progress, rows_for, transformed
from byol.evaluate.results import accuracy

Scorer = Callable[[np.ndarray], np.ndarray]     # embeddings [n, d] -> class probabilities [n, C]
Curve = list[tuple[float, float]]               # (validation top-1 %, validation cross-entropy) per epoch


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """One epoch's random stream: its block order, row shuffle and (heads) dropout all draw from it,
    so (seed, epoch) alone fixes the pass, and a refit with the same seed replays the same epochs."""
    return np.random.default_rng([seed, epoch])


def shuffled_epoch(store, mask: np.ndarray, block_rows: int, rng: np.random.Generator,
                   transform: Callable | None, desc: str) -> Iterator[dict[str, np.ndarray]]:
    """One training pass over the selected rows (mask [N] bool) as shuffle buffers
    {"embeddings": [n, d], "labels": [n]}, transform applied.

    Small blocks in a random order, SHUFFLE_BLOCKS of them mixed and row-shuffled per buffer, so a
    class-sorted store still gives mixed minibatches. The caller should drop each buffer before
    asking for the next (`del`), so that only one is in memory (~64 MB).
    """
    block = rows_for(store.dim, block_rows, SHUFFLE_BLOCK_BYTES)
    with progress(store.n_rows, desc) as bar:
        yield from transformed(iter_rows(store, mask, block, rng=rng, mix=SHUFFLE_BLOCKS, bar=bar), transform)


def score_blocks(score: Scorer, store, mask: np.ndarray, block_rows: int, transform: Callable | None = None,
                 desc: str = "score") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(class probabilities [n, C], original labels [n]) of the selected rows, block by block in store order."""
    with progress(store.n_rows, desc) as bar:
        for block in transformed(iter_rows(store, mask, block_rows, bar=bar), transform):
            yield score(block["embeddings"]), block["labels"]


def validation_scores(score: Scorer, data, block_rows: int, transform: Callable | None) -> tuple[float, float]:
    """(top-1 %, mean cross-entropy) of the scorer on the validation rows (data.val_mask of the train store)."""
    hits = nll = n = 0.0
    for probs, labels in score_blocks(score, data.train, data.val_mask, block_rows, transform, "validation"):
        targets = data.encode(labels)
        hits += accuracy(probs, targets) * len(labels) / 100
        # a probability of 0 (saturated softmax) counts as 1e-12: the loss stays finite
        nll -= np.log(np.maximum(probs[np.arange(len(targets)), targets], 1e-12)).sum()
        n += len(labels)
    return 100.0 * hits / max(n, 1), float(nll / max(n, 1))


def run_epochs(train_epoch: Callable[[int], object], epochs: int,
               validate: Callable[[], tuple[float, float]] | None = None) -> Curve:
    """train_epoch(0), ..., train_epoch(epochs - 1), with validate() after each; returns its figures
    (empty without validate), the curve the number of epochs is chosen on."""
    curve = []
    for epoch in range(epochs):
        train_epoch(epoch)
        if validate is not None:
            curve.append(validate())
    return curve
