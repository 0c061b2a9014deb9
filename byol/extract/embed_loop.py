"""Extraction's one core: rows of a dataset, read ahead, through an encoder, into a sink; stoppable.

`byol.extract.extract_command` (a dataset split -> a feature store, resumable, under torchrun too) and
`byol.extract.latent_command` (any images -> a store, .npy or .csv) are the same run with other inputs and sinks:

    options = EmbedOptions(...)                        the flags they share, checked once
    batches = iter_batches(dataset, ranges, workers)   rows read ahead (byol/data/batches.py)
    groups  = ShardGroups(shards, options.batch_size)  which rows go through the encoder together
    entries = embed_rows(embed, batches, groups, sink, bar, interrupted)

A sink takes `put(shard, rows [g, D], labels [g], indices [g], paths, last, extra)` and ends with
`finish()` (returns {shard: manifest entry}) or `abort()` (keeps finished shards, deletes the one in
progress): byol.store.ShardSink, or latent vectors' .npy / .csv writers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from byol.base.errors import ConfigError, Interrupted
from byol.base.stopping import StopSignals, signal_name
from byol.data.batches import Rows
from byol.encoders.source import PRECISIONS
from byol.store import DTYPES


@dataclass
class EmbedOptions:
    """The settings extraction and latent vectors share (byol/command_line.py declares their flags once)."""

    overrides: list[str] = field(default_factory=list)   # section.key=value on top of the checkpoint's config
    rows_per_shard: int = 10_000
    dtype: str = "float32"
    batch_size: int = 256
    num_workers: int | None = None                       # None: the command decides
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    trust_checkpoint: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        self.overrides = [str(o) for o in self.overrides]
        for name in ("rows_per_shard", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
            setattr(self, name, int(getattr(self, name)))
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def data_settings(data) -> dict:
    """The data keys that decide which images (in which order) a store holds."""
    out = {"name": data.name, "max_images": data.max_images}
    if data.name != "digits":   # digits are embedded: their root means nothing
        out["root"] = str(Path(data.root).resolve())
    if data.name == "folder":
        out["on_bad_image"] = data.on_bad_image
    return out


@dataclass
class Group:
    """Rows that go through the encoder together, all bound for `shard`; `last`: they complete it."""
    shard: int
    last: bool
    rows: Rows                         # [g] rows (g <= batch_size); none skipped


class ShardGroups:
    """Readable rows, in order -> encoder groups of at most `batch_size` rows that never cross a shard.

    `shards` yields (shard number, its rows) in the order the rows fill them: extraction's shards
    still to write, each as many rows as the split gives it; latent vectors' shards from the first
    unfinished one on, R rows each (the rows may run out in the last one). As a group never spans
    two shards, a run resumed at a shard feeds the encoder the groups an uninterrupted run does
    (bit-equal rows), and extraction and latent vectors group the same rows alike.
    """

    def __init__(self, shards: Iterable[tuple[int, int]], batch_size: int):
        self.shards, self.batch_size = iter(shards), batch_size
        self.shard, self.size, self.filled = -1, 0, 0
        self.pending: list[Rows] = []      # read, not yet grouped
        self.n_pending = 0

    def add(self, rows: Rows) -> Iterator[Group]:
        if len(rows.indices):
            self.pending.append(rows)
            self.n_pending += len(rows.indices)
        while self.n_pending and self.n_pending >= self._wanted():
            yield self._take(self._wanted())

    def finish(self) -> Iterator[Group]:
        """The rows left, which end the last shard."""
        if self.n_pending:
            yield self._take(self.n_pending, last=True)

    def _wanted(self) -> int:
        if self.filled == self.size:                     # the shard is full: the next one
            self.shard, self.size = next(self.shards)
            self.filled = 0
        return min(self.batch_size, self.size - self.filled)

    def _take(self, n: int, last: bool = False) -> Group:
        parts = self.pending
        images = torch.cat([p.images for p in parts]) if len(parts) > 1 else parts[0].images
        labels, indices = (np.concatenate([getattr(p, name) for p in parts]) for name in ("labels", "indices"))
        paths = [x for p in parts for x in p.paths] if parts[0].paths is not None else None

        def rows(a: int, b: int) -> Rows:
            return Rows(int(indices[a]), int(indices[b - 1]) + 1, images[a:b], labels[a:b], indices[a:b],
                        paths[a:b] if paths is not None else None)
        self.n_pending -= n
        self.pending = [rows(n, len(indices))] if self.n_pending else []
        self.filled += n
        return Group(self.shard, last or self.filled == self.size, rows(0, n))


def embed_rows(embed: Callable, batches: Iterable[Rows], groups: ShardGroups, sink, bar,
               interrupted: Callable[[str], str]) -> dict[int, dict]:
    """Every batch through `embed` (uint8 [g, 3, S, S] -> (float rows [g, D], extra outputs or None))
    into `sink`, in `groups`; returns sink.finish().

    SIGINT/SIGTERM/SIGUSR1 (to this process or its whole group, reader workers included) stop it
    before the next batch: the sink is aborted (finished shards stay, the one in progress is
    deleted) and Interrupted is raised with the message interrupted(signal name) (byol/base/stopping.py).
    """
    def put(group: Group) -> None:
        rows, extra = embed(group.rows.images)
        sink.put(group.shard, rows, group.rows.labels, group.rows.indices, group.rows.paths, group.last, extra)

    try:
        with StopSignals() as stop:
            for batch in batches:
                if stop.signum:
                    break
                for group in groups.add(batch):
                    put(group)
                bar.update(batch.stop - batch.start)
            else:   # every row read: finish, even if a signal came in meanwhile
                for group in groups.finish():
                    put(group)
                return sink.finish()
        sink.abort()
        raise Interrupted(interrupted(signal_name(stop.signum)), stop.signum)
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()
        if hasattr(batches, "close"):     # a generator: stop its reader thread or workers now
            batches.close()
