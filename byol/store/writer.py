"""Writing the feature store (layout: byol/store/reader.py): one shard at a time, then the manifest.

Every write is atomic: a shard is built in a temp file in the split directory and renamed into
place on close() after an fsync, and manifest.json (written last, also atomically) marks the split
complete. A failure (disk full included) deletes the temp file and leaves finished shards as they
were, so a rerun of the extraction resumes from them.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path

import h5py
import numpy as np

from byol.base.atomic import PendingFile, atomic_write_text, file_sha256, write_error
from byol.base.errors import StoreError
from byol.store.format import DTYPES, FIELDS, FORMAT, MANIFEST, SETTINGS_ATTR, VERSION, chunk_rows, shard_name, to_json


def _attr_value(value):
    """HDF5 attributes hold scalars and strings only: dicts, lists and None go in as JSON strings."""
    if value is None or isinstance(value, (dict, list, tuple)):
        return to_json(value, sort_keys=True)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


class ShardWriter:
    """Builds one shard in a temp file in the split dir (`.shard-00003.h5.tmp-<pid>`), renamed to
    `shard-00003.h5` on close(); an exception inside `with` (or abort()) deletes the temp file.

    Readers therefore never see a half-written shard under its final name. After close(),
    `entry` holds the shard's manifest entry {"name", "rows", "sha256"}.

    `extra` declares more row-aligned datasets beside the standard fields, {name: (width, dtype)}:
    width w gives [N, w] rows, width None one value a row [N]; every append() then passes
    `extra={name: values}` for each of them. FeatureStore reads only the standard fields; the extra
    ones are there for h5py readers (e.g. a head's outputs, written by byol.extract.latent_outputs).
    """

    def __init__(self, split_dir: str | Path, index: int, dim: int, dtype: str = "float32",
                 with_paths: bool = False, attrs: dict | None = None, chunk_rows: int = 1024,
                 settings: dict | None = None, extra: dict[str, tuple[int | None, object]] | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if dim < 1 or chunk_rows < 1:
            raise ValueError(f"dim and chunk_rows must be >= 1, got {dim} and {chunk_rows}")
        self.extra = {name: ((() if width is None else (int(width),)), np.dtype(kind))
                      for name, (width, kind) in (extra or {}).items()}
        clash = [name for name in self.extra if name in FIELDS]
        if clash:
            raise ValueError(f"extra dataset {clash[0]!r} would replace a standard field of the shard")
        self.split_dir = Path(split_dir)
        self.split_dir.mkdir(parents=True, exist_ok=True)
        self.name = shard_name(index)
        self.path = self.split_dir / self.name
        self._pending = PendingFile(self.path)     # byol/base/atomic.py: temp name, fsync, rename
        self.tmp = self._pending.tmp
        self.dim, self.dtype, self.with_paths = int(dim), np.dtype(dtype), with_paths
        self.rows = 0
        self.entry: dict | None = None
        self._file: h5py.File | None = None
        with self._pending.guarded(self.abort):   # disk full, no permission: the earlier shards stay as they are
            self._file = h5py.File(self.tmp, "w")
            self._create_datasets(chunk_rows)
            for key, value in (attrs or {}).items():
                self._file.attrs[key] = _attr_value(value)
            self._file.attrs[SETTINGS_ATTR] = to_json(settings or {}, sort_keys=True)

    def _create_datasets(self, limit: int) -> None:
        """Empty, row-resizable, row-chunked datasets; a chunk stays <= 4 MB so reads of a few rows are cheap.

        The standard fields share the embeddings' chunk rows (extraction appends whole chunks of
        those); each extra dataset is chunked by its own row size."""
        rows = chunk_rows(self.dim * self.dtype.itemsize, limit)

        def create(name, row_shape, dtype, rows=rows, fletcher32=True):
            self._file.create_dataset(name, shape=(0, *row_shape), maxshape=(None, *row_shape),
                                      chunks=(rows, *row_shape), dtype=dtype, fletcher32=fletcher32)

        create("embeddings", (self.dim,), self.dtype)
        create("labels", (), np.int64)
        create("indices", (), np.int64)
        if self.with_paths:  # HDF5 refuses filters on variable-length data; the file SHA-256 covers it
            create("paths", (), h5py.string_dtype("utf-8"), fletcher32=False)
        for name, (row_shape, dtype) in self.extra.items():
            create(name, row_shape, dtype, rows=chunk_rows(int(np.prod(row_shape)) * dtype.itemsize, limit))

    def append(self, embeddings: np.ndarray, labels: np.ndarray, indices: np.ndarray,
               paths: list[str] | None = None, extra: dict[str, np.ndarray] | None = None) -> None:
        """Add n rows: embeddings [n, dim] (cast to the shard dtype), labels [n], indices [n], paths n strings,
        extra {name: [n, width] or [n]} for each dataset declared in the constructor (cast to its dtype)."""
        if self._file is None:
            raise ValueError(f"{self.tmp}: shard writer is already closed")
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must be [n, {self.dim}], got {embeddings.shape}")
        n = embeddings.shape[0]
        columns = {"embeddings": embeddings.astype(self.dtype, copy=False),
                   "labels": np.asarray(labels, dtype=np.int64),
                   "indices": np.asarray(indices, dtype=np.int64)}
        if (paths is not None) != self.with_paths:
            raise ValueError(f"paths must be given exactly when with_paths=True (with_paths={self.with_paths})")
        if paths is not None:
            columns["paths"] = np.array([str(p) for p in paths], dtype=object)
        for name, values in columns.items():
            if values.shape[:1] != (n,) or (name != "embeddings" and values.ndim != 1):
                raise ValueError(f"{name} must have shape [{n}], got {values.shape}")
        extra = extra or {}
        if set(extra) != set(self.extra):
            raise ValueError(f"extra must hold exactly the declared datasets {sorted(self.extra)}, got {sorted(extra)}")
        for name, (row_shape, dtype) in self.extra.items():
            values = np.asarray(extra[name]).astype(dtype, copy=False)
            if values.shape != (n, *row_shape):
                raise ValueError(f"extra {name!r} must have shape {[n, *row_shape]}, got {list(values.shape)}")
            columns[name] = values
        start, self.rows = self.rows, self.rows + n
        try:
            for name, values in columns.items():
                dataset = self._file[name]
                dataset.resize(self.rows, axis=0)
                dataset[start:self.rows] = values
        except OSError as e:    # disk full mid-shard: drop this shard's temp file, keep finished shards
            self.abort()
            raise write_error(self.path, e) from e

    def close(self) -> dict:
        """Finish the shard: flush, fsync, hash the temp file, rename it into place; returns its manifest entry."""
        if self.entry is not None:
            return self.entry
        if self._file is None:
            raise ValueError(f"{self.tmp}: shard writer was aborted")
        with self._pending.guarded(self.abort):
            self._file.flush()
            self._file.close()
            self._file = None
            digest = file_sha256(self.tmp)  # the bytes that the rename puts under the final name
        self._pending.commit()
        self.entry = {"name": self.name, "rows": self.rows, "sha256": digest}
        return self.entry

    def abort(self) -> None:
        """Drop the shard: close and delete the temp file, so no partial shard is left behind."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        self._pending.discard()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_manifest(split_dir: str | Path, shards: list[dict], dim: int, dtype: str, settings: dict,
                   attrs: dict) -> Path:
    """Write manifest.json atomically (temp + os.replace), after all shards: it marks a complete split."""
    split_dir = Path(split_dir)
    entries = sorted(({"name": s["name"], "rows": int(s["rows"]), "sha256": s["sha256"]} for s in shards),
                     key=lambda s: s["name"])
    for entry in entries:
        if not (split_dir / entry["name"]).is_file():
            raise StoreError(f"{split_dir / entry['name']}: shard missing while writing the manifest: "
                             "rerun the extraction")
    manifest = {"format": FORMAT, "version": VERSION, "dim": int(dim), "dtype": str(dtype),
                "n_rows": sum(e["rows"] for e in entries), "shards": entries, "settings": settings,
                "attrs": attrs, "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    return atomic_write_text(split_dir / MANIFEST, to_json(manifest, indent=2))
