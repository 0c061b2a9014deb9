"""Reading selected rows of a feature store in blocks, and statistics computed in streaming passes.

A selection is a boolean mask over the store's rows (e.g. "labelled training rows outside the
validation split"). `iter_rows` reads consecutive row blocks and keeps the selected rows, in store
order or, for SGD, in a seeded random block order with several blocks mixed and shuffled together.
Only one block (or one shuffle buffer) is in memory at a time.
"""
from __future__ import annotations

import sys
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from byol.store import FeatureStore

BLOCK_BYTES = 32 * 2**20        # a read block of float32 embeddings stays around this size
DEFAULT_BLOCK_ROWS = 8192
SHUFFLE_BLOCK_BYTES = 4 * 2**20  # SGD reads small blocks ...
SHUFFLE_BLOCKS = 16              # ... and mixes this many in one shuffle buffer (~64 MB)


def progress(total: int | None, desc: str, unit: str = "rows") -> tqdm:
    """A progress bar on stderr for long work (rows read, epochs, ...)."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, mininterval=1.0,
                leave=False, dynamic_ncols=True)


def rows_for(dim: int, block_rows: int = DEFAULT_BLOCK_ROWS, max_bytes: int = BLOCK_BYTES) -> int:
    """Rows per block: at most block_rows, and at most max_bytes of float32 rows of this dim."""
    return max(1, min(int(block_rows), max_bytes // (4 * max(1, int(dim)))))


def block_plan(store: FeatureStore, block_rows: int) -> list[tuple[int, int, int, int]]:
    """(shard number, global first row, local start, local stop) of every block, in store order."""
    plan, offset = [], 0
    for number, shard in enumerate(store.shards):
        for start in range(0, shard["rows"], block_rows):
            plan.append((number, offset + start, start, min(start + block_rows, shard["rows"])))
        offset += shard["rows"]
    return plan


def iter_rows(store: FeatureStore, mask: np.ndarray | None = None, block_rows: int = DEFAULT_BLOCK_ROWS,
              fields=("embeddings", "labels"), rng: np.random.Generator | None = None, mix: int = 1,
              bar: tqdm | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield {field: rows} of the selected rows (mask [N] bool; None = all), block by block.

    Without rng: consecutive blocks in store order. With rng: blocks in a random order, `mix` blocks
    read into one buffer and row-shuffled in place (a shuffle buffer of mix x block_rows rows), so
    class-sorted stores still give mixed minibatches. Empty selections inside a block are skipped.
    `bar` (if given) advances by the rows read.
    """
    block_rows = rows_for(store.dim, block_rows)
    plan = block_plan(store, block_rows)
    if rng is not None:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    for group_start in range(0, len(plan), max(1, mix)):
        wanted = []
        for number, first, start, stop in plan[group_start:group_start + max(1, mix)]:
            keep = None if mask is None else mask[first:first + stop - start]
            if keep is not None and not keep.any():
                if bar is not None:
                    bar.update(stop - start)
                continue
            wanted.append((number, start, stop, None if keep is None or keep.all() else keep))
        if not wanted:
            continue
        block = _fill(store, wanted, fields, bar)
        if rng is not None:
            # In place, one permutation for every field (same seed, same length: same shuffle), so
            # the buffer is never copied: memory stays one shuffle buffer.
            seed = int(rng.integers(2**63))
            for values in block.values():
                np.random.default_rng(seed).shuffle(values)
        yield block
        del block          # not held while the next buffer is read


def _fill(store: FeatureStore, wanted: list, fields, bar: tqdm | None) -> dict[str, np.ndarray]:
    """Read the wanted (shard, start, stop, row mask or None) blocks into one preallocated buffer."""
    sizes = [stop - start if keep is None else int(keep.sum()) for _, start, stop, keep in wanted]
    buffer, offset = None, 0
    for (number, start, stop, keep), size in zip(wanted, sizes):
        part = store.read_block(number, start, stop, fields)   # a damaged shard: StoreError naming it
        if bar is not None:
            bar.update(stop - start)
        if keep is not None:
            part = {k: v[keep] for k, v in part.items()}
        if len(wanted) == 1:          # a single block is its own buffer: no copy
            return part
        if buffer is None:
            buffer = {k: np.empty((sum(sizes),) + v.shape[1:], v.dtype) for k, v in part.items()}
        for k, v in part.items():
            buffer[k][offset:offset + size] = v
        offset += size
        del part
    return buffer


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _length(block: dict[str, np.ndarray]) -> int:
    return len(next(iter(block.values())))


def rebatch(blocks: Iterable[dict[str, np.ndarray]], rows: int, min_last: int = 1
            ) -> Iterator[dict[str, np.ndarray]]:
    """Regroup blocks into batches of `rows` rows; the remainder comes last, merged into the batch
    before it when shorter than min_last (IncrementalPCA needs >= n_components rows a batch)."""
    buffer, count, held = [], 0, None
    for block in blocks:
        buffer.append(block)
        count += _length(block)
        while count >= rows:
            joined = _concat(buffer)
            batch, rest = {k: v[:rows] for k, v in joined.items()}, {k: v[rows:] for k, v in joined.items()}
            buffer, count = ([rest] if _length(rest) else []), count - rows
            if held is not None:
                yield held
            held = batch
    tail = _concat(buffer) if count else None
    if tail is not None and held is not None and count < min_last:
        held, tail = _concat([held, tail]), None
    if held is not None:
        yield held
    if tail is not None:
        yield tail


class Standardizer:
    """x -> (x - mean) / scale in float32; scale 1 where a feature is constant (as scikit-learn does)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        self.mean = np.asarray(mean, np.float64)
        self.scale = np.asarray(scale, np.float64)
        self._mean32, self._scale32 = self.mean.astype(np.float32), self.scale.astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self._mean32) / self._scale32

    @property
    def out_dim(self) -> int:
        return len(self.mean)


def fit_standardizer(store: FeatureStore, mask: np.ndarray | None, block_rows: int = DEFAULT_BLOCK_ROWS,
                     desc: str = "scaler") -> Standardizer:
    """Mean and scale of the selected rows, from StandardScaler.partial_fit over blocks (float64 sums)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    total = store.n_rows
    with progress(total, desc) as bar:
        for block in iter_rows(store, mask, block_rows, fields=("embeddings",), bar=bar):
            scaler.partial_fit(block["embeddings"])
    return Standardizer(scaler.mean_, scaler.scale_)


def transformed(blocks: Iterable[dict[str, np.ndarray]], transform: Callable | None
                ) -> Iterator[dict[str, np.ndarray]]:
    """Apply transform (if any) to the embeddings of each block."""
    for block in blocks:
        if transform is not None:
            block = dict(block, embeddings=transform(block["embeddings"]))
        yield block
        del block          # not held while the next block is read
