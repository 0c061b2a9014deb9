"""Rows of a dataset read ahead of the consumer, in plan order (extraction and latent vectors).

Batches come from a background thread (datasets with `get_batch`: STL-10 read with pread, digits in
memory) or from DataLoader worker processes (image folders, whose decoding is CPU-bound).
"""
from __future__ import annotations

import os
import queue
import threading

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from byol.stopping import ignore_stop_signals, iterate


def read_rows(dataset, start: int, stop: int) -> tuple[torch.Tensor, np.ndarray, list[str] | None]:
    """Rows [start, stop) of a dataset -> (uint8 [n, 3, S, S], int64 labels [n], relative paths or None).

    Image folders decode with `load`, which raises a DataError naming an undecodable file rather
    than silently substituting the next image (as training does)."""
    idx = np.arange(start, stop, dtype=np.int64)
    if hasattr(dataset, "get_batch"):
        images, labels = dataset.get_batch(idx)
        return images, np.asarray(labels, np.int64), None
    if hasattr(dataset, "load") and hasattr(dataset, "relative_path"):
        images = torch.stack([dataset.load(int(i)) for i in idx])
        return images, np.asarray(dataset.labels, np.int64)[idx], [dataset.relative_path(int(i)) for i in idx]
    items = [dataset[int(i)] for i in idx]
    return torch.stack([im for im, _ in items]), np.array([y for _, y in items], np.int64), None


class _Batches(Dataset):
    """Item j = batch j of the plan: (shard, start, stop, rows)."""

    def __init__(self, dataset, batches: list[tuple[int, int, int]]):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int):
        shard, start, stop = self.batches[j]
        return shard, start, stop, read_rows(self.dataset, start, stop)


def default_workers(dataset) -> int:
    """0 (one background thread) for datasets read with get_batch; processes for image decoding."""
    return 0 if hasattr(dataset, "get_batch") else min(4, os.cpu_count() or 1)


def iter_batches(dataset, batches: list[tuple[int, int, int]], num_workers: int, depth: int = 3):
    """Yield (shard, start, stop, (images, labels, paths)) in plan order, read ahead of the consumer."""
    plan = _Batches(dataset, batches)
    if num_workers > 0:     # workers leave stop signals to this process (byol/stopping.py)
        yield from iterate(DataLoader(plan, batch_size=None, shuffle=False, num_workers=num_workers,
                                      prefetch_factor=depth, persistent_workers=False,
                                      worker_init_fn=ignore_stop_signals))
    else:
        yield from in_background((plan[j] for j in range(len(plan))), depth)


def in_background(iterable, depth: int):
    """Run `iterable` in a thread, at most `depth` items ahead; its exceptions re-raise here."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run():
        try:
            for item in iterable:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as e:   # handed to the consumer, which re-raises it
            put(("error", e))

    thread = threading.Thread(target=run, name="extract-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
