"""The store's writer: rows go to HDF5 shards in a background thread, so the encoder never waits on disk.

The compute thread `put`s each group's rows [n, dim] with the shard they belong to; the thread
appends them to a `ShardWriter` in whole HDF5 chunks and closes the shard (fsync, SHA-256, atomic
rename) when its last rows arrive, or at finish() for a shard the rows ran out in (latent vectors'
last one). The queue is bounded (`depth` groups, byol/base/background.py), so memory stays flat however
far the encoder runs ahead.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

from byol.base.background import put_while
from byol.store.format import chunk_rows
from byol.store.writer import ShardWriter


class ShardSink:
    """Writes rows in a background thread behind a bounded queue, one ShardWriter at a time.

    Rows are appended in whole HDF5 chunks, so a shard's bytes do not depend on the batch size;
    closing a shard (fsync, SHA-256, rename into place) also happens off the compute thread. An
    error in the thread re-raises in the caller's next put() or finish(). `extra` declares more
    per-row datasets ({name: (width, dtype)}, as ShardWriter's), passed to each put().
    """

    def __init__(self, split_dir: Path, dim: int, dtype: str, with_paths: bool, attrs: dict,
                 settings: dict, depth: int = 4, extra: dict | None = None):
        self.writer_args = dict(split_dir=split_dir, dim=dim, dtype=dtype, with_paths=with_paths,
                                attrs=attrs, settings=settings, extra=extra)
        self.chunk = chunk_rows(dim * np.dtype(dtype).itemsize)     # the writer's embeddings chunk rows
        self.entries: dict[int, dict] = {}
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(depth)
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def put(self, shard: int, embeddings, labels, indices, paths, last: bool, extra: dict | None = None) -> None:
        """Queue rows of `shard` (blocks while the queue is full); `last`: the shard is complete."""
        self._send((shard, last, (embeddings, np.asarray(labels, np.int64), indices,
                                  list(paths) if paths is not None else None, extra)))

    def finish(self) -> dict[int, dict]:
        """Wait for every queued row to be written (a shard still open is closed); returns {shard: manifest entry}."""
        self._send(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.entries

    def abort(self) -> None:
        """Stop without finishing: the shard being written is deleted (finished ones stay)."""
        self._abort.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=60)

    def _send(self, item) -> None:
        if not put_while(self._queue, item, lambda: self.error is None):
            raise self.error

    def _run(self) -> None:
        writer, shard, buffered = None, None, []
        try:
            while (item := self._queue.get()) is not None and not self._abort.is_set():
                shard, last, rows = item
                if writer is None:
                    writer = ShardWriter(index=shard, chunk_rows=self.chunk, **self.writer_args)
                buffered.append(rows)
                if last or sum(len(b[0]) for b in buffered) >= self.chunk:
                    buffered = self._append(writer, buffered, last)
                if last:
                    self.entries[shard], writer = writer.close(), None
            if writer is not None and not self._abort.is_set():   # finish(): the rows ran out in this shard
                if buffered:
                    self._append(writer, buffered, True)
                self.entries[shard], writer = writer.close(), None
        except BaseException as e:   # handed to the compute thread
            self.error = e
        finally:
            if writer is not None:
                writer.abort()

    def _append(self, writer: ShardWriter, buffered: list, last: bool) -> list:
        """Append whole chunks of the buffered rows (all of them if `last`); return the rest."""
        emb, labels, indices = (np.concatenate([b[i] for b in buffered]) for i in range(3))
        paths = [p for b in buffered for p in b[3]] if buffered[0][3] is not None else None
        extra = ({name: np.concatenate([b[4][name] for b in buffered]) for name in buffered[0][4]}
                 if buffered[0][4] is not None else None)
        cut = len(emb) if last else len(emb) // self.chunk * self.chunk

        def part(a, b):
            return (emb[a:b], labels[a:b], indices[a:b], paths[a:b] if paths is not None else None,
                    {name: values[a:b] for name, values in extra.items()} if extra is not None else None)
        for a in range(0, cut, self.chunk):
            writer.append(*part(a, a + self.chunk))
        return [part(cut, len(emb))] if cut < len(emb) else []
