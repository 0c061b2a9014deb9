"""k-nearest-neighbour classification over a store, streaming: a running top-k per query.

Test (or validation) queries are held in chunks of a few tens of MB; for each chunk one pass over
the training blocks keeps, per query, the k best similarities seen so far and their labels. Memory
is O(query chunk x (dim + k) + one train block), whatever the number of training rows.

Similarity: cosine (rows L2-normalised, s = q.x) or euclidean (ranked by 2 q.x - |x|^2, which
orders like -|q - x|^2). Votes: uniform (each of the k neighbours counts 1, as scikit-learn's
KNeighborsClassifier) or temperature-weighted (Wu et al. 2018, Sec. 3.4: weight exp(s / T),
k=200, T=0.07 in SSL papers; with euclidean, s = -(d - d_min) per query).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from byol.evaluate.blocks import iter_rows, progress, rebatch, rows_for, transformed
from byol.evaluate.results import accuracy

QUERY_BYTES = 64 * 2**20
SUB_ROWS = 512                      # queries per similarity matrix (SUB_ROWS x train block floats)
DEFAULT_K = {"temperature": 200, "uniform": 10}


def weighted_vote(sim: np.ndarray, neighbor_labels: np.ndarray, n_classes: int, temperature: float) -> np.ndarray:
    """Wu et al. 2018 vote: votes[i, c] = sum_j [label_ij == c] exp(sim_ij / T).

    sim, neighbor_labels [n, k] -> votes [n, n_classes]. Labels < 0 (no neighbour) add nothing.
    byol.pretrain.monitor (the training-time kNN monitor) uses this too, through `vote`.
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
