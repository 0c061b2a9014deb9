"""Rows of a dataset read ahead of the consumer, in plan order (extraction and latent vectors).

Batches come from a background thread (datasets with `get_batch`: STL-10 read with pread, digits in
memory; byol/base/background.py) or from DataLoader worker processes (image files, whose decoding is
CPU-bound). A dataset may also read its rows itself (`read_rows(start, stop) -> Rows`): latent
vectors' input list does, leaving out the files that are not images (`Rows.skipped`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from byol.base.background import in_background
from byol.base.stopping import ignore_stop_signals, iterate


@dataclass
class Rows:
    """Rows [start, stop) of a dataset as read: the n readable ones (n <= stop - start) and the skipped ones."""
    start: int
    stop: int
    images: torch.Tensor               # uint8 [n, 3, S, S]
    labels: np.ndarray                 # int64 [n]
    indices: np.ndarray                # int64 [n]: each row's position in the dataset
    paths: list[str] | None            # n paths (image folders, input lists), else None
    skipped: list[dict] = field(default_factory=list)   # {"index", "path", "reason"} of unreadable rows


def read_rows(dataset, start: int, stop: int) -> Rows:
    """Rows [start, stop) of a dataset (paths: relative ones for image folders).

    Image folders decode with `load`, which raises a DataError naming an undecodable file rather
    than silently substituting the next image (as training does)."""
    if hasattr(dataset, "read_rows"):
        return dataset.read_rows(start, stop)
    idx = np.arange(start, stop, dtype=np.int64)
    if hasattr(dataset, "get_batch"):
        images, labels = dataset.get_batch(idx)
        return Rows(start, stop, images, np.asarray(labels, np.int64), idx, None)
    if hasattr(dataset, "load") and hasattr(dataset, "relative_path"):
        images = torch.stack([dataset.load(int(i)) for i in idx])
        return Rows(start, stop, images, np.asarray(dataset.labels, np.int64)[idx], idx,
                    [dataset.relative_path(int(i)) for i in idx])
    items = [dataset[int(i)] for i in idx]
    return Rows(start, stop, torch.stack([im for im, _ in items]), np.array([y for _, y in items], np.int64), idx,
                None)


class _Plan(Dataset):
    """Item j = read_rows of the plan's range j."""

    def __init__(self, dataset, ranges: list[tuple[int, int]]):
        self.dataset, self.ranges = dataset, ranges

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, j: int) -> Rows:
        return read_rows(self.dataset, *self.ranges[j])


def default_workers(dataset) -> int:
    """0 (one background thread) for datasets read with get_batch; processes for image decoding."""
    return 0 if hasattr(dataset, "get_batch") else min(4, os.cpu_count() or 1)


def iter_batches(dataset, ranges: list[tuple[int, int]], num_workers: int, depth: int = 3):
    """Yield Rows for each range [start, stop) of the plan, in plan order, read ahead of the consumer."""
    plan = _Plan(dataset, ranges)
    if num_workers > 0:     # workers leave stop signals to this process (byol/base/stopping.py)
        yield from iterate(DataLoader(plan, batch_size=None, shuffle=False, num_workers=num_workers,
                                      prefetch_factor=depth, persistent_workers=False,
                                      worker_init_fn=ignore_stop_signals))
    else:
        yield from in_background((plan[j] for j in range(len(plan))), depth)
