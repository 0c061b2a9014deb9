"""Nearest store rows and near-duplicate pairs, streamed through the one kNN core.

Both questions are answered by `byol.base.knn.running_topk` with store row numbers riding where the
classifier's labels ride: the store is read in blocks (`FeatureStore.iter_blocks`), so memory holds
the queries, their k best, one store block and one SUB_ROWS x block similarity matrix, whatever the
store's size. Similarity is cosine (rows L2-normalised), the kNN probe's and the gallery's metric.

Near-duplicates are each row's nearest rows above a threshold: every row of the store is a query
in turn (a block of `query_rows` at a time, each block one pass over the store), so the cost is
N^2 D multiply-adds, exact, like the probe; pairs become groups around leaders (`group_pairs`).
Their similarity is taken after subtracting the store's mean row (`center`, one more pass): ReLU
features and pixels share a large common component that lifts every cosine towards 1. Measured on
CIFAR-10 test images (benchmarks/duplicate_threshold.py, docs/stages/search.md): for raw
pixels, centred cosine at 0.95 kept 99.8% of JPEG-50 copies and 92.5% of shrunk ones while pairing
0.55% of distinct images, plain cosine at 0.99 kept 87.2% of the shrunk copies and paired 1.0%; for a
BYOL encoder the trade-off is about the same either way, centring only spreads the scale (distinct
images' nearest-row median 0.96 -> 0.93), which makes thresholds easier to read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from byol.base.errors import StoreError
from byol.base.knn import prepare_rows, running_topk

BLOCK_ROWS = 16384          # store rows per block read: 16384 x 512 float32 = 32 MB, and a 512 x 16384
                            # similarity block with its argpartition indices: about 130 MB at the peak
QUERY_ROWS = 4096           # duplicate search: store rows used as queries per pass over the store
MAX_PER_ITEM = 10           # duplicate search: at most this many near copies kept per row


def require_rows(store) -> None:
    """An empty store answers nothing: say so, naming it."""
    if store.n_rows == 0:
        raise StoreError(f"{store.split_dir}: the store holds no rows: extract some images into it first")


def mean_row(store, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """The store's mean embedding [D] float32, in one streamed pass (float64 sums)."""
    total = np.zeros(store.dim, np.float64)
    for block in store.iter_blocks(block_rows, fields=("embeddings",)):
        total += block["embeddings"].sum(axis=0, dtype=np.float64)
    return (total / max(store.n_rows, 1)).astype(np.float32)


def _bank(store, block_rows: int, center: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(normalised embeddings [b, D], their store row numbers [b]) block by block."""
    start = 0
    for block in store.iter_blocks(block_rows, fields=("embeddings",)):
        x = block["embeddings"] if center is None else block["embeddings"] - center
        yield prepare_rows(x, "cosine"), np.arange(start, start + len(x), dtype=np.int64)
        start += len(x)


def nearest(store, queries: np.ndarray, k: int, exclude_rows: np.ndarray | None = None,
            block_rows: int = BLOCK_ROWS, center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k store rows most similar to each query [n, D]: (cosine similarity [n, k] best first,
    store row numbers [n, k]; -1 and -inf where the store has fewer rows). `exclude_rows` [n]: a row
    each query must not get back (a query that is itself a store row), -1 for none. `center` [D]:
    subtracted from both sides first (the similarity of the rows' deviations from it)."""
    require_rows(store)
    if queries.ndim != 2 or queries.shape[1] != store.dim:
        raise StoreError(f"{store.split_dir}: queries are {queries.shape[-1]}-d, the store's rows {store.dim}-d: "
                         "embed the queries with the store's encoder")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    extra = 0 if exclude_rows is None else 1
    queries = queries if center is None else queries - center
    sims, rows = running_topk(_bank(store, block_rows, center), prepare_rows(queries, "cosine"), k + extra, "cosine")
    if exclude_rows is not None:                  # drop each query's own row (or the last) and keep k
        drop = rows == np.asarray(exclude_rows, np.int64)[:, None]
        drop[~drop.any(axis=1), -1] = True
        keep = ~drop
        sims = sims[keep].reshape(len(rows), k)
        rows = rows[keep].reshape(len(rows), k)
    return sims, rows


@dataclass
class Duplicates:
    """What `duplicate_pairs` found: pairs [p, 2] (row a < row b) and their similarity [p], most
    similar first; and a histogram of every row's similarity to its nearest other row (HIST_BINS
    bins over [-1, 1]), to choose a threshold from (`nearest_quantiles`)."""
    pairs: np.ndarray
    similarity: np.ndarray
    nearest_histogram: np.ndarray

    def nearest_quantiles(self, qs=(0.5, 0.9, 0.99, 0.999)) -> dict[str, float]:
        """{"q": s}: the share q of rows have their nearest other row at similarity <= s (bin width 0.001)."""
        cum = np.cumsum(self.nearest_histogram)
        edges = np.linspace(-1, 1, HIST_BINS + 1)
        return {str(q): round(float(edges[min(np.searchsorted(cum, q * cum[-1]) + 1, HIST_BINS)]), 4)
                for q in qs} if cum[-1] else {}


HIST_BINS = 2000


def duplicate_pairs(store, threshold: float, max_per_item: int = MAX_PER_ITEM, center: bool = True,
                    block_rows: int = BLOCK_ROWS, query_rows: int = QUERY_ROWS) -> Duplicates:
    """Pairs of distinct store rows with cosine similarity >= threshold (of the rows' deviations
    from the store's mean row when `center`). Each row contributes at most `max_per_item` of its
    nearest rows, so the pairs stay bounded by N x max_per_item whatever the threshold."""
    require_rows(store)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    mean = mean_row(store, block_rows) if center else None
    found_a, found_b, found_s = [], [], []
    histogram = np.zeros(HIST_BINS, np.int64)
    k = min(max_per_item, store.n_rows - 1)
    start = 0
    for block in store.iter_blocks(query_rows, fields=("embeddings",)) if k >= 1 else ():
        queries = block["embeddings"]
        own = np.arange(start, start + len(queries), dtype=np.int64)
        sims, rows = nearest(store, queries, k, exclude_rows=own, block_rows=block_rows, center=mean)
        histogram += np.histogram(np.clip(sims[:, 0], -1, 1), HIST_BINS, (-1.0, 1.0))[0]
        hit = (sims >= threshold) & (rows >= 0)
        a, b = np.broadcast_to(own[:, None], rows.shape)[hit], rows[hit]
        found_a.append(np.minimum(a, b)), found_b.append(np.maximum(a, b)), found_s.append(sims[hit])
        start += len(queries)
    if not found_a or not sum(map(len, found_a)):
        return Duplicates(np.empty((0, 2), np.int64), np.empty(0, np.float32), histogram)
    pairs = np.stack([np.concatenate(found_a), np.concatenate(found_b)], axis=1)
    sims = np.concatenate(found_s)
    pairs, first = np.unique(pairs, axis=0, return_index=True)     # (a, b) found from a's side and b's
    sims = sims[first]
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -sims))
    return Duplicates(pairs[order], sims[order], histogram)


def group_pairs(pairs: np.ndarray, sims: np.ndarray) -> list[dict]:
    """Groups of paired rows, each a leader and the rows paired with it, so that every member is
    near-identical to the leader itself (connected components would chain look-alikes: a small plane
    on blue sky next to another next to another joined 12 distinct CIFAR-10 images into one group).
    Leaders are taken by most pairs first (ties: the lower row); a row joins the first group whose
    leader it is paired with. Largest group first (ties: the most similar pair first):
    [{"rows": [leader, others by similarity to it], "similarity": [s of each other to the leader]}, ...]."""
    partners: dict[int, list[tuple[float, int]]] = {}
    for (a, b), s in zip(pairs.tolist(), sims.tolist()):
        partners.setdefault(a, []).append((s, b))
        partners.setdefault(b, []).append((s, a))
    taken, groups = set(), []
    for leader in sorted(partners, key=lambda r: (-len(partners[r]), r)):
        if leader in taken:
            continue
        members = sorted(((s, r) for s, r in partners[leader] if r not in taken), key=lambda m: (-m[0], m[1]))
        if not members:
            continue
        taken.add(leader)
        taken.update(r for _, r in members)
        groups.append({"rows": [leader] + [r for _, r in members], "similarity": [s for s, _ in members]})
    groups.sort(key=lambda g: (-len(g["rows"]), -g["similarity"][0], g["rows"][0]))
    return groups
