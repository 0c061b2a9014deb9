"""HDF5 feature store: embeddings (or raw pixels) of one dataset split, in shards, read in row blocks.

Every downstream tool (k-NN, linear probe, PCA, export) reads this. A split is a directory:

    split_dir/
        shard-00000.h5, shard-00001.h5, ...   one HDF5 file each, renamed into place when complete
        manifest.json                          written last: its presence means the split is complete
        .lock                                  held (flock) by the process writing the split (byol/base/file_lock.py)

Names and constants: `byol.store.format`. Writing: `byol.store.writer` (ShardWriter, write_manifest),
`byol.store.sink` (in a background thread). Resuming an interrupted run: `byol.store.resume`.
Reading: `FeatureStore` below.

Each shard holds row-aligned datasets (N = rows in that shard, D = dim):

    embeddings  [N, D] float32 or float16
    labels      [N]    int64, -1 = unlabeled
    indices     [N]    int64, the row's position in the source dataset
    paths       [N]    UTF-8 strings (optional)

plus attributes: the provenance (`attrs`; dicts, lists and None as JSON strings) and `settings_json`.
A shard may hold more row-aligned datasets (ShardWriter's `extra`, e.g. a head's outputs); this
reader ignores them.

manifest.json:

    {"format": "byol-feature-store", "version": 1, "dim": D, "dtype": "float32", "n_rows": total,
     "shards": [{"name": "shard-00000.h5", "rows": N0, "sha256": "<hex of the file bytes>"}, ...],
     "settings": {...}, "attrs": {...}, "created": "<ISO time>"}

Anyone can write a store with plain h5py + json + hashlib following this layout, and read any shard
without this library: `h5py.File(path)["embeddings"][:]`. Memory stays bounded whatever the dataset
size: writers append blocks, readers yield row blocks (`FeatureStore.iter_blocks`).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from byol.base.atomic import atomic_path, file_sha256
from byol.base.errors import StoreError
from byol.store.format import (FEATURE_ATTRS, FEATURE_SETTINGS, FIELDS, FORMAT, MANIFEST, SETTINGS_ATTR, VERSION,
                               to_json)


@contextlib.contextmanager
def _open_shard(path: Path, failure: str):
    """Open a shard read-only; an OSError from h5py (incl. a fletcher32 mismatch) becomes a StoreError."""
    try:
        with h5py.File(path, "r") as f:
            yield f
    except OSError as e:
        raise StoreError(f"{path}: {failure} ({e}): the shard is damaged: rerun the extraction") from None


def _read_manifest(split_dir: Path) -> dict:
    """manifest.json, checked for format and internal consistency."""
    path = split_dir / MANIFEST
    if not path.is_file():
        raise StoreError(f"{split_dir}: no {MANIFEST}: not a feature store or an unfinished extraction: "
                         "rerun the extraction")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}, not {FORMAT!r}")
        if int(manifest.get("version", 0)) > VERSION:
            raise ValueError(f"version {manifest['version']} is newer than this library reads ({VERSION})")
        if int(manifest["dim"]) < 1:
            raise ValueError(f"dim is {manifest['dim']}")
        n_rows, total = int(manifest["n_rows"]), sum(int(s["rows"]) for s in manifest["shards"])
        names = [s["name"] for s in manifest["shards"]]
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path}: unreadable manifest ({e}): rerun the extraction") from None
    if n_rows != total:
        raise StoreError(f"{path}: n_rows {manifest['n_rows']} disagrees with the shard rows ({total}): "
                         "rerun the extraction")
    if len(set(names)) != len(names):
        raise StoreError(f"{path}: a shard is listed twice: rerun the extraction")
    return manifest


class FeatureStore:
    """A finished split, read in row blocks. Build one with `FeatureStore.open(split_dir)`."""

    def __init__(self, split_dir: Path, manifest: dict):
        self.split_dir = Path(split_dir)
        self.dim: int = int(manifest["dim"])
        self.dtype: str = str(manifest["dtype"])
        self.n_rows: int = int(manifest["n_rows"])
        self.settings: dict = manifest.get("settings") or {}
        self.attrs: dict = manifest.get("attrs") or {}
        self.shards: list[dict] = [dict(s, rows=int(s["rows"])) for s in manifest["shards"]]
        self.has_paths = False

    @classmethod
    def open(cls, split_dir: str | Path, verify: bool = False) -> "FeatureStore":
        """Read the manifest and check every shard's header; verify=True also checks every SHA-256."""
        split_dir = Path(split_dir)
        store = cls(split_dir, _read_manifest(split_dir))
        store._require_files()
        if verify:  # before reading headers, so a damaged shard is reported as corrupt
            store.verify()
        store._check_headers()
        return store

    def _path(self, shard: dict) -> Path:
        return self.split_dir / shard["name"]

    def _require_files(self) -> None:
        for shard in self.shards:
            if not self._path(shard).is_file():
                raise StoreError(f"{self._path(shard)}: shard listed in {MANIFEST} is missing: rerun the extraction")

    def _check_headers(self) -> None:
        """Every shard's shapes, dtype and settings agree with the manifest (metadata only, cheap)."""
        with_paths = []
        for shard in self.shards:
            with _open_shard(self._path(shard), "not a readable HDF5 shard") as f:
                self._check_header(f, self._path(shard), shard["rows"])
                with_paths.append("paths" in f)
        if any(with_paths) and not all(with_paths):
            raise StoreError(f"{self.split_dir}: some shards have paths and some not: rerun the extraction")
        self.has_paths = bool(with_paths) and all(with_paths)

    def _check_header(self, f: h5py.File, path: Path, rows: int) -> None:
        """Catch shards that were swapped, truncated or written by another extraction run."""
        def fail(what: str):
            raise StoreError(f"{path}: {what}: rerun the extraction")

        for name in ("embeddings", "labels", "indices"):
            if name not in f:
                fail(f"no dataset {name!r}")
        emb = f["embeddings"]
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            fail(f"embeddings are {emb.shape}, {MANIFEST} says dim {self.dim}")
        if emb.dtype != np.dtype(self.dtype):
            fail(f"embeddings are {emb.dtype}, {MANIFEST} says {self.dtype}")
        for name in ("embeddings", "labels", "indices", "paths"):
            if name in f and f[name].shape[0] != rows:
                fail(f"{name} has {f[name].shape[0]} rows, {MANIFEST} says {rows}")
        if SETTINGS_ATTR in f.attrs and json.loads(f.attrs[SETTINGS_ATTR]) != self.settings:
            fail(f"written with other settings than {MANIFEST} (shards of two runs mixed)")

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.split_dir)!r}, rows={self.n_rows}, dim={self.dim}, dtype={self.dtype})"

    def verify(self) -> None:
        """Compare each shard's SHA-256 with the manifest: catches bit rot and files swapped or edited."""
        self._require_files()
        for shard in self.shards:
            path = self._path(shard)
            if "sha256" not in shard:
                raise StoreError(f"{path}: {MANIFEST} records no sha256 for this shard: "
                                 "add it or rerun the extraction")
            if file_sha256(path) != shard["sha256"]:
                raise StoreError(f"{path}: SHA-256 differs from {MANIFEST}: the shard is corrupt: "
                                 "rerun the extraction")

    def iter_blocks(self, block_rows: int = 65536, fields=("embeddings", "labels"),
                    raw: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Yield consecutive row blocks {field: [n, ...]} across shards, n <= block_rows (shorter at shard ends).

        Embeddings come as float32 [n, dim] unless raw=True (then in the stored dtype); paths as an
        object array of str. Only one block is in memory at a time.
        """
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        fields = self._check_fields(fields)
        for shard in self.shards:
            with _open_shard(self._path(shard), "checksum failure") as f:
                for start in range(0, shard["rows"], block_rows):
                    yield {name: _read_field_rows(f, name, start, start + block_rows, raw) for name in fields}

    def read_block(self, shard_number: int, start: int, stop: int, fields=("embeddings", "labels"),
                   raw: bool = False) -> dict[str, np.ndarray]:
        """Rows [start, stop) of shard `shard_number` (its position in `shards`) as {field: [n, ...]},
        typed as iter_blocks yields them. For readers that plan their own block order (e.g. shuffled
        SGD passes); a damaged shard raises StoreError naming it."""
        fields = self._check_fields(fields)
        if not 0 <= shard_number < len(self.shards):
            raise IndexError(f"{self.split_dir}: no shard number {shard_number} (it has {len(self.shards)})")
        rows = self.shards[shard_number]["rows"]
        if not 0 <= start <= stop <= rows:
            raise IndexError(f"{self.split_dir}: rows [{start}, {stop}) are outside shard {shard_number} "
                             f"(0..{rows})")
        with _open_shard(self._path(self.shards[shard_number]), "checksum failure") as f:
            return {name: _read_field_rows(f, name, start, stop, raw) for name in fields}

    def _check_fields(self, fields) -> tuple[str, ...]:
        fields = tuple(fields)
        unknown = [name for name in fields if name not in FIELDS]
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}: choose from {FIELDS}")
        if "paths" in fields and not self.has_paths:
            raise StoreError(f"{self.split_dir}: this store has no paths: extract with paths to get them")
        return fields

    def _column(self, name: str) -> np.ndarray:
        blocks = [block[name] for block in self.iter_blocks(65536, fields=(name,))]
        return np.concatenate(blocks) if blocks else np.empty(0, np.int64 if name != "paths" else object)

    def labels(self) -> np.ndarray:
        """All labels [N] int64 (-1 = unlabeled); 8 bytes a row, so cheap even for large stores."""
        return self._column("labels")

    def indices(self) -> np.ndarray:
        """All source-dataset positions [N] int64."""
        return self._column("indices")

    def paths(self) -> list[str] | None:
        """All source paths, or None when the store was written without them."""
        return self._column("paths").tolist() if self.has_paths else None

    def take(self, rows, field: str = "embeddings") -> np.ndarray:
        """Rows `rows` (store row numbers [n], any order) of one field, in that order; one block in
        memory at a time (a few rows picked from a store of any size)."""
        rows = np.asarray(rows, np.int64)
        if rows.size and not (0 <= rows.min() and rows.max() < self.n_rows):
            raise IndexError(f"{self.split_dir}: rows outside 0..{self.n_rows - 1}")
        out, start = None, 0
        for block in self.iter_blocks(fields=(field,)):
            values = block[field]
            if out is None:
                out = np.empty((len(rows), *values.shape[1:]), values.dtype)
            inside = (rows >= start) & (rows < start + len(values))
            out[inside] = values[rows[inside] - start]
            start += len(values)
        return out if out is not None else np.empty((0,), np.float32)

    def to_array(self, max_bytes: int = 2 * 2**30) -> np.ndarray:
        """The whole embeddings matrix [N, dim] float32, refused above max_bytes so a big store can't exhaust RAM."""
        need = self.n_rows * self.dim * 4
        if need > max_bytes:
            raise StoreError(f"{self.split_dir}: embeddings need {need:,} bytes as float32, over max_bytes="
                             f"{max_bytes:,}: use iter_blocks() to stream them (or raise max_bytes)")
        out = np.empty((self.n_rows, self.dim), np.float32)
        row = 0
        for block in self.iter_blocks(fields=("embeddings",)):
            out[row:row + len(block["embeddings"])] = block["embeddings"]
            row += len(block["embeddings"])
        return out

    def virtual_dataset(self, out_path: str | Path | None = None) -> Path:
        """One HDF5 file whose `embeddings`, `labels`, `indices` map onto all shards (no data copied).

        Tools that want a single dataset (h5py, HDFView, other languages) can read it directly.
        """
        out = Path(out_path) if out_path is not None else self.split_dir / "virtual.h5"
        out.parent.mkdir(parents=True, exist_ok=True)
        shapes = {"embeddings": (self.dim,), "labels": (), "indices": ()}
        dtypes = {"embeddings": np.dtype(self.dtype), "labels": np.int64, "indices": np.int64}
        layouts = {name: h5py.VirtualLayout(shape=(self.n_rows, *shapes[name]), dtype=dtypes[name])
                   for name in shapes}
        row = 0
        for shard in self.shards:
            rows = shard["rows"]
            if rows:
                # Relative to the virtual file's folder (where HDF5 looks), so the split can move whole.
                source = os.path.relpath(self._path(shard).resolve(), out.parent.resolve())
                for name, layout in layouts.items():
                    layout[row:row + rows] = h5py.VirtualSource(source, name, shape=(rows, *shapes[name]))
            row += rows
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
            for name, layout in layouts.items():
                f.create_virtual_dataset(name, layout)
            f.attrs[SETTINGS_ATTR] = to_json(self.settings, sort_keys=True)
            f.attrs["attrs_json"] = to_json(self.attrs, sort_keys=True)
        return out


def _read_field_rows(f: h5py.File, name: str, start: int, stop: int, raw: bool) -> np.ndarray:
    """Rows [start, stop) of one dataset: embeddings upcast to float32 unless raw, paths decoded to str."""
    if name == "paths":
        return f["paths"].asstr()[start:stop]
    values = f[name][start:stop]
    return values.astype(np.float32, copy=False) if name == "embeddings" and not raw else values


def check_compatible(a: FeatureStore, b: FeatureStore, what=("dim", "encoder")) -> None:
    """Refuse to combine stores (e.g. train and test features) that don't live in the same feature space.

    `what` items: "dim", "dtype", "settings" (the whole dict), "encoder" (the attrs keys in FEATURE_ATTRS),
    "feature-settings" (the settings keys in FEATURE_SETTINGS, reported as settings.KEY), or any other
    attrs key. Provenance and settings keys are compared only when both stores record them.
    """
    diffs = []
    for item in what:
        if item in ("dim", "dtype", "settings"):
            pairs = [(item, getattr(a, item), getattr(b, item))]
        elif item == "feature-settings":
            pairs = [(f"settings.{key}", a.settings[key], b.settings[key])
                     for key in FEATURE_SETTINGS if key in a.settings and key in b.settings]
        else:
            keys = FEATURE_ATTRS if item == "encoder" else (item,)
            pairs = [(key, a.attrs[key], b.attrs[key]) for key in keys if key in a.attrs and key in b.attrs]
        diffs += [f"{key} {x!r} vs {y!r}" for key, x, y in pairs if x != y]
    if diffs:
        raise StoreError(f"feature stores {a.split_dir} and {b.split_dir} differ ({'; '.join(diffs)}): "
                         "extract both with the same checkpoint and settings")
