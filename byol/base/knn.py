"""The one k-nearest-neighbour core, numpy only: a running top-k over blocks of bank rows, and the
class vote over it. Training's kNN monitor (byol.pretrain.monitor), the kNN probe over stores
(byol.evaluate.neighbors) and the report's gallery (byol.report.gallery) all call these, so their
figures agree by construction.

Similarity: cosine (rows L2-normalised, s = q.x) or euclidean (ranked by 2 q.x - |x|^2, which
orders like -|q - x|^2). Votes: uniform (each of the k neighbours counts 1, as scikit-learn's
KNeighborsClassifier) or temperature-weighted (Wu et al. 2018, Sec. 3.4: weight exp(s / T),
k=200, T=0.07 in SSL papers; with euclidean, s = -(d - d_min) per query). Memory: the queries
[n, D], k best per query, one bank block and a SUB_ROWS x block similarity matrix.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

SUB_ROWS = 512                      # queries per similarity matrix (SUB_ROWS x train block floats)
DEFAULT_K = {"temperature": 200, "uniform": 10}


def weighted_vote(sim: np.ndarray, neighbor_labels: np.ndarray, n_classes: int, temperature: float) -> np.ndarray:
    """Wu et al. 2018 vote: votes[i, c] = sum_j [label_ij == c] exp(sim_ij / T).

    sim, neighbor_labels [n, k] -> votes [n, n_classes]. Labels < 0 (no neighbour) add nothing.
    """
    weight = np.exp(sim.astype(np.float64) / temperature)
    return _bincount_votes(neighbor_labels, weight, n_classes)


def uniform_vote(neighbor_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """votes[i, c] = number of the k neighbours of query i labelled c."""
    return _bincount_votes(neighbor_labels, np.ones(neighbor_labels.shape), n_classes)


def _bincount_votes(labels: np.ndarray, weight: np.ndarray, n_classes: int) -> np.ndarray:
    n = labels.shape[0]
    valid = labels >= 0
    flat = (np.arange(n)[:, None] * n_classes + labels)[valid]
    return np.bincount(flat, weights=weight[valid], minlength=n * n_classes).reshape(n, n_classes)


def prepare_rows(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows as the similarity expects them: L2-normalised for cosine (zero rows stay zero)."""
    x = np.ascontiguousarray(x, np.float32)
    if metric == "cosine":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norm > 0, norm, 1)
    return x


def running_topk(bank: Iterator[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int,
                 metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Best k (score, label) per query over all bank blocks (x [b, D] prepared, labels [b]).

    Returns scores [n, k] sorted best first (cosine similarity, or 2 q.x - |x|^2) and labels [n, k]
    (-1 where the bank had fewer than k rows).
    """
    n = len(queries)
    best_s = np.full((n, k), -np.inf, np.float32)
    best_l = np.full((n, k), -1, np.int64)
    for x, labels in bank:
        sq = (x * x).sum(axis=1) if metric == "euclidean" else None
        for lo in range(0, n, SUB_ROWS):
            hi = min(lo + SUB_ROWS, n)
            s = queries[lo:hi] @ x.T
            if sq is not None:
                s *= 2
                s -= sq
            if s.shape[1] > k:                       # the block's own top k first: a small merge after
                idx = np.argpartition(s, -k, axis=1)[:, -k:]
                s, lab = np.take_along_axis(s, idx, axis=1), labels[idx]
            else:
                lab = np.broadcast_to(labels, s.shape)
            cand_s = np.concatenate([best_s[lo:hi], s], axis=1)
            cand_l = np.concatenate([best_l[lo:hi], lab], axis=1)
            idx = np.argpartition(cand_s, -k, axis=1)[:, -k:]
            best_s[lo:hi] = np.take_along_axis(cand_s, idx, axis=1)
            best_l[lo:hi] = np.take_along_axis(cand_l, idx, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_l, order, axis=1)


def vote(scores: np.ndarray, labels: np.ndarray, k: int, n_classes: int, weighting: str,
         temperature: float, metric: str, query_sqnorm: np.ndarray | None = None) -> np.ndarray:
    """Class votes [n, C] from the first k of the sorted neighbours."""
    scores, labels = scores[:, :k], labels[:, :k]
    if weighting == "uniform":
        return uniform_vote(labels, n_classes)
    if metric == "euclidean":                        # s = -(d - d_min): exp(s / T) stays finite
        dist = np.sqrt(np.maximum(query_sqnorm[:, None] - scores.astype(np.float64), 0))
        scores = -(dist - dist[:, :1])
    return weighted_vote(np.where(labels >= 0, scores, 0), labels, n_classes, temperature)


def nearest_rows(store, queries: np.ndarray, k: int, metric: str = "cosine",
                 block_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of `store` to each query [n, D], by the same running top-k as
    classification (the row numbers ride where the labels do): (scores [n, k] best first, store row
    numbers [n, k], -1 where the store has fewer than k rows). The report's neighbour gallery."""
    def bank():
        start = 0
        for block in store.iter_blocks(block_rows, fields=("embeddings",)):
            x = block["embeddings"]
            yield prepare_rows(x, metric), np.arange(start, start + len(x), dtype=np.int64)
            start += len(x)
    return running_topk(bank(), prepare_rows(queries, metric), k, metric)
