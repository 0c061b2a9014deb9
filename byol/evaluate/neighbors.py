"""k-nearest-neighbour classification over a store, streaming: a running top-k per query.

Test (or validation) queries are held in chunks of a few tens of MB; for each chunk one pass over
the training blocks keeps, per query, the k best similarities seen so far and their labels. Memory
is O(query chunk x (dim + k) + one train block), whatever the number of training rows.

Similarities, the running top-k and the votes are the shared core in byol.base.knn (the training
monitor and the report's gallery use it too); this module adds stores, validation and chunking.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from byol.base.knn import DEFAULT_K, prepare_rows, running_topk, vote
from byol.evaluate.blocks import iter_rows, progress, rebatch, rows_for, transformed
from byol.evaluate.results import accuracy

QUERY_BYTES = 64 * 2**20
class KNN:
    """kNN over the rows `bank_mask` of a store, in a chosen feature transform (None = stored features)."""

    def __init__(self, data, metric: str, weighting: str, temperature: float, transform: Callable | None,
                 block_rows: int):
        self.data, self.metric, self.weighting, self.temperature = data, metric, weighting, temperature
        self.transform, self.block_rows = transform, block_rows
        self.out_dim = getattr(transform, "out_dim", data.train.dim)

    def _bank(self, mask, bar):
        for block in transformed(iter_rows(self.data.train, mask, self.block_rows, bar=bar), self.transform):
            yield prepare_rows(block["embeddings"], self.metric), self.data.encode(block["labels"])

    def query_chunks(self, store, mask) -> Iterator[dict[str, np.ndarray]]:
        """Selected rows of `store`, transformed, in chunks of about QUERY_BYTES (one bank pass each)."""
        rows = rows_for(max(self.out_dim, store.dim), 1 << 30, QUERY_BYTES)
        return transformed(rebatch(iter_rows(store, mask, self.block_rows), rows), self.transform)

    def neighbours(self, queries: np.ndarray, bank_mask: np.ndarray, k: int, desc: str):
        """(sorted scores, labels, |q|^2) of the k nearest bank rows to each query."""
        q = prepare_rows(queries, self.metric)
        with progress(self.data.train.n_rows, desc) as bar:
            scores, labels = running_topk(self._bank(bank_mask, bar), q, k, self.metric)
        return scores, labels, (q.astype(np.float64) ** 2).sum(axis=1)

    def votes(self, top, k: int) -> np.ndarray:
        scores, labels, sqnorm = top
        return vote(scores, labels, k, self.data.n_classes, self.weighting, self.temperature, self.metric,
                    sqnorm)


def evaluate_knn(data, opts, transform: Callable | None = None, method: str = "knn"):
    """Choose k on the validation split (unless --k), then score the test rows against all training rows.

    Returns (iterator of (votes [n, C], true labels [n]) over test chunks, info for the JSON).
    """
    metric = opts.metric or ("cosine" if method == "knn" else "euclidean")
    weighting = opts.knn_weighting or ("temperature" if method == "knn" else "uniform")
    knn = KNN(data, metric, weighting, opts.temperature, transform, opts.block_rows)
    info = {"metric": metric, "weighting": weighting, "streams": True}
    if weighting == "temperature":
        info["temperature"] = opts.temperature
    n_fit, n_all = int(data.fit_mask.sum()), int(data.train_mask.sum())
    if opts.k is not None:
        k, selection = opts.k, {"on": "flag"}
    elif not data.val_mask.any():
        k, selection = DEFAULT_K[weighting], {"on": "default (no validation split)"}
    else:
        grid = sorted({min(g, n_fit) for g in opts.k_grid})
        val_mask = _subsample(data.val_mask, opts.val_max_queries, data.seed)
        hits = np.zeros(len(grid))
        for chunk in knn.query_chunks(data.train, val_mask):
            top = knn.neighbours(chunk["embeddings"], data.fit_mask, grid[-1], "knn validation")
            targets = data.encode(chunk["labels"])
            hits += [accuracy(knn.votes(top, g), targets) * len(targets) for g in grid]
        val_top1 = (hits / int(val_mask.sum())).tolist()
        k = grid[int(np.argmax(val_top1))]
        selection = {"on": "validation", "grid": grid, "val_top1": val_top1,
                     "n_val_queries": int(val_mask.sum())}
    k = min(int(k), n_all)
    info.update(selected={"k": k}, selection=selection)

    def test_scores():
        for chunk in knn.query_chunks(data.test, data.test_mask):
            yield knn.votes(knn.neighbours(chunk["embeddings"], data.train_mask, k, "knn test"), k), chunk["labels"]

    return test_scores(), info


def _subsample(mask: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most `limit` of the selected rows, chosen by a seeded permutation (validation queries cost a
    full pass over the training rows each chunk, so their number is capped)."""
    rows = np.flatnonzero(mask)
    if limit is None or len(rows) <= limit:
        return mask
    out = np.zeros_like(mask)
    out[np.random.default_rng([seed, 1]).permutation(rows)[:limit]] = True
    return out
