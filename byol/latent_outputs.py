"""Where latent vectors go: the feature store (default), a memory-mapped .npy, or a .csv written
row by row. Each writer takes batches (vectors [n, D], labels, indices, paths, optional head
outputs) and finishes with a summary; see byol/latent.py for the file layouts.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path

import numpy as np

from byol.errors import ConfigError
from byol.store.lock import exclusive_writer
from byol.store.resume import finished_files
from byol.store.writer import ShardWriter, write_manifest

HEAD_FIELDS = ("head_hidden", "head_probs", "head_pred")

class StoreOut:
    """OUT/ as one feature-store split: shards of `rows_per_shard` rows, manifest last. With a head,
    each shard also holds its outputs (HEAD_FIELDS) as extra datasets and `head_classes` as an attribute."""

    def __init__(self, out: Path, dim: int, attrs: dict, settings: dict, rows_per_shard: int, head_dims=None):
        self.out, self.dim, self.attrs, self.settings = out, dim, attrs, settings
        self.rows_per_shard = rows_per_shard
        self.shard_attrs, self.extra = attrs, None
        if head_dims is not None:
            hidden, n_classes, classes = head_dims
            self.shard_attrs = dict(attrs, head_classes=[int(c) for c in classes])
            self.extra = dict(zip(HEAD_FIELDS, ((hidden, np.float32), (n_classes, np.float32), (None, np.int64))))
        self.writer: ShardWriter | None = None
        self.entries, self.shard = [], 0
        self.lock = contextlib.ExitStack()     # held until close()/abort(): one writer per store
        self.lock.enter_context(exclusive_writer(out, "latent-vector run"))

    def _open(self):
        self.writer = ShardWriter(self.out, self.shard, self.dim, "float32", with_paths=True, attrs=self.shard_attrs,
                                  settings=self.settings, extra=self.extra)

    def write(self, emb, labels, indices, paths, head=None):
        a = 0
        while a < len(emb):
            if self.writer is None:
                self._open()
            b = min(len(emb), a + self.rows_per_shard - self.writer.rows)
            extra = None if head is None else {name: values[a:b] for name, values in zip(HEAD_FIELDS, head)}
            self.writer.append(emb[a:b], labels[a:b], indices[a:b], paths[a:b], extra)
            if self.writer.rows >= self.rows_per_shard:
                self.entries.append(self.writer.close())
                self.writer, self.shard = None, self.shard + 1
            a = b

    def close(self):
        if self.writer is not None:
            self.entries.append(self.writer.close())
            self.writer = None
        if not self.entries:   # no readable input: still a valid (empty) store
            self._open()
            self.entries.append(self.writer.close())
            self.writer = None
        write_manifest(self.out, self.entries, self.dim, "float32", self.settings, self.attrs)
        self.lock.close()

    def abort(self):
        if self.writer is not None:
            self.writer.abort()
        self.lock.close()


class _Npy:
    """A float/int .npy filled through a memory map of the upper bound `rows`, trimmed on close."""

    def __init__(self, path: Path, rows: int, shape: tuple, dtype):
        self.path, self.shape, self.dtype = path, shape, dtype
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.map = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=(max(rows, 1), *shape))
        self.rows = 0

    def write(self, values):
        self.map[self.rows:self.rows + len(values)] = values
        self.rows += len(values)

    def close(self):
        self.map.flush()
        if self.rows == len(self.map):
            del self.map
            os.replace(self.tmp, self.path)
            return
        final = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=(self.rows, *self.shape))
        for a in range(0, self.rows, 65536):
            final[a:a + 65536] = self.map[a:min(a + 65536, self.rows)]
        final.flush()
        del final, self.map
        self.tmp.unlink()

    def abort(self):
        self.map = None
        self.tmp.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


class NpyOut:
    def __init__(self, out: Path, rows: int, dim: int, head_dims=None):
        out.parent.mkdir(parents=True, exist_ok=True)
        self.base = out
        self.arrays = {"": _Npy(Path(f"{out}.npy"), rows, (dim,), np.float32)}
        if head_dims is not None:
            hidden, n_classes, classes = head_dims
            self.arrays["head_hidden"] = _Npy(Path(f"{out}.head_hidden.npy"), rows, (hidden,), np.float32)
            self.arrays["head_probs"] = _Npy(Path(f"{out}.head_probs.npy"), rows, (n_classes,), np.float32)
            self.arrays["head_pred"] = _Npy(Path(f"{out}.head_pred.npy"), rows, (), np.int64)
            Path(f"{out}.head_classes.json").write_text(json.dumps([int(c) for c in classes]))
        self.paths = open(f"{out}.paths.txt", "w", encoding="utf-8")

    def write(self, emb, labels, indices, paths, head=None):
        self.arrays[""].write(emb)
        if head is not None:
            for name, values in zip(HEAD_FIELDS, head):
                self.arrays[name].write(values)
        self.paths.writelines(p.replace("\n", " ") + "\n" for p in paths)

    def close(self):
        for a in self.arrays.values():
            a.close()
        self.paths.close()

    def abort(self):
        for a in self.arrays.values():
            a.abort()
        self.paths.close()
        for p in (Path(self.paths.name), Path(f"{self.base}.head_classes.json")):
            p.unlink(missing_ok=True)


class CsvOut:
    def __init__(self, out: Path, dim: int, head_dims=None):
        out.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(f"{out}.csv", "w", encoding="utf-8", newline="")
        self.csv = csv.writer(self.file)
        header = ["path", "label"] + [f"f{i}" for i in range(dim)]
        if head_dims is not None:
            hidden, n_classes, classes = head_dims
            header += [f"h{i}" for i in range(hidden)] + [f"p_{int(c)}" for c in classes] + ["pred"]
        self.csv.writerow(header)

    def write(self, emb, labels, indices, paths, head=None):
        for r in range(len(emb)):
            row = [paths[r], int(labels[r])] + [f"{v:.9g}" for v in emb[r]]
            if head is not None:
                row += [f"{v:.9g}" for v in head[0][r]] + [f"{v:.9g}" for v in head[1][r]] + [int(head[2][r])]
            self.csv.writerow(row)

    def close(self):
        self.file.close()

    def abort(self):
        self.file.close()
        Path(self.file.name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ command
def out_base(out: Path, fmt: str) -> Path:
    if fmt != "store" and out.suffix.lower() in (".npy", ".csv"):
        return out.with_suffix("")
    return out


def check_out(out: Path, fmt: str, overwrite: bool) -> list[Path]:
    """Refuse to mix with an earlier output unless `overwrite` (which deletes it first)."""
    if fmt == "store":
        existing = finished_files(out)
    else:
        names = ["csv"] if fmt == "csv" else ["npy", "paths.txt", "head_classes.json",
                                               *(f"{n}.npy" for n in HEAD_FIELDS)]
        existing = [p for p in (Path(f"{out}.{n}") for n in names) if p.is_file()]   # OUT.skipped.json: replaced
    if existing and not overwrite:
        raise ConfigError(f"--out '{out}' already holds output ({existing[0].name}); choose another --out "
                          f"or pass --overwrite")
    for p in existing:
        p.unlink()
    return existing
