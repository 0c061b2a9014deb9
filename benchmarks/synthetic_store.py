"""A generated feature store of any size, written block by block (the benchmarks' large stores).

`write_synthetic_store(split_dir, rows, dim, shard_rows, make_rows, attrs, settings)` asks
`make_rows(lo, hi)` for rows [lo, hi) as (embeddings [n, dim] float32, labels [n] int64), at most
BLOCK_ROWS at a time, so the generator never holds more than one block, and writes them with the
library's own ShardWriter and manifest: what a reader sees is a store like any extraction's.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # run from a checkout, uninstalled
from byol.store.writer import ShardWriter, write_manifest  # noqa: E402

BLOCK_ROWS = 65536


def write_synthetic_store(split_dir: Path, rows: int, dim: int, shard_rows: int,
                          make_rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                          attrs: dict, settings: dict) -> None:
    entries = []
    for number, start in enumerate(range(0, rows, shard_rows)):
        stop = min(start + shard_rows, rows)
        with ShardWriter(split_dir, number, dim, attrs=attrs, settings=settings) as writer:
            for lo in range(start, stop, BLOCK_ROWS):
                hi = min(lo + BLOCK_ROWS, stop)
                x, labels = make_rows(lo, hi)
                writer.append(x, labels, np.arange(lo, hi))
        entries.append(writer.entry)
    write_manifest(split_dir, entries, dim, "float32", settings, attrs)
