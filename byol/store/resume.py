"""Resuming a split: make its directory ready for a (re)run, and find the finished shards it can keep.

A run writes shard k = rows [k*R, (k+1)*R) of the split (R = rows per shard) and the manifest last.
When a run is interrupted, or rerun with the same settings, the shards already finished are kept:
a rerun then only computes the rest and gives a store byte-identical to an uninterrupted run.
A directory holding a store written with other settings is refused (unless `overwrite`), since
mixing shards of two runs would silently give rows from two feature spaces.

    known = prepare_split_dir(split_dir, settings, shard_count(n, R), overwrite)   # once, before any write
    kept, todo = keep_finished_shards(split_dir, shards, n, R, dim, dtype, known)    # each writer, its shards

Latent vectors skip unreadable inputs, so their shard k holds the k-th R rows written, not fixed
rows of the input: a rerun keeps the leading finished shards (`keep_leading_shards`) and goes on
after the last input they hold.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import h5py
import numpy as np

from byol.base.atomic import file_sha256, stale_temp_files
from byol.base.errors import StoreError
from byol.store.format import MANIFEST, SETTINGS_ATTR, shard_name

log = logging.getLogger("byol")


def shard_count(n_rows: int, rows_per_shard: int) -> int:
    """Shards of a split of n_rows rows (0 for an empty split)."""
    return math.ceil(n_rows / rows_per_shard)


def shard_rows(k: int, n_rows: int, rows_per_shard: int) -> tuple[int, int]:
    """Rows [start, stop) of the split that shard k holds."""
    return k * rows_per_shard, min(n_rows, (k + 1) * rows_per_shard)


def setting_differences(theirs, ours, prefix: str = "") -> list[str]:
    """Readable differences between two (nested) settings dicts: ["dtype: 'float16' there, 'float32' now", ...]."""
    if not (isinstance(theirs, dict) and isinstance(ours, dict)):
        return [] if theirs == ours else [f"{prefix.rstrip('.') or 'settings'}: {theirs!r} there, {ours!r} now"]
    out = []
    for key in sorted(set(theirs) | set(ours)):
        out += setting_differences(theirs.get(key, "<absent>"), ours.get(key, "<absent>"), f"{prefix}{key}.")
    return out


def finished_files(split_dir: str | Path) -> list[Path]:
    """The manifest and finished shards in split_dir (manifest first): a store a new run would replace."""
    split_dir = Path(split_dir)
    return [p for p in [split_dir / MANIFEST, *sorted(split_dir.glob("shard-*.h5"))] if p.is_file()]


def _other_settings(split_dir: Path, what: str) -> StoreError:
    return StoreError(f"'{split_dir}' holds a feature store written with other settings ({what}); "
                      f"use another --out, delete that directory, or pass --overwrite to replace it")


def prepare_split_dir(split_dir: str | Path, settings: dict, n_shards: int, overwrite: bool) -> dict[str, str]:
    """Make `split_dir` ready for a run with `settings` (one process only, before any shard is written).

    Refuses a store (manifest or shard) written with other settings, unless `overwrite`, which
    deletes the store's files first. Removes temp files of an interrupted run, shards that cannot
    be opened or lie beyond n_shards, and the manifest (rewritten at the end). Returns
    {shard name: sha256} from a manifest with the same settings, to check those shards against.
    """
    split_dir = Path(split_dir)
    if overwrite and split_dir.is_dir():   # every file a run writes here, finished or not; other files stay
        for pattern in ("shard-*.h5", MANIFEST, "virtual.h5"):
            for path in [*split_dir.glob(pattern), *stale_temp_files(split_dir, pattern)]:
                path.unlink(missing_ok=True)
    known = {}
    manifest = split_dir / MANIFEST
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text(encoding="utf-8"))
            theirs, shards = saved["settings"], saved["shards"]
        except (ValueError, KeyError, TypeError):
            raise _other_settings(split_dir, f"its {MANIFEST} is unreadable") from None
        if theirs != settings:
            raise _other_settings(split_dir, "; ".join(setting_differences(theirs, settings)))
        known = {s["name"]: s["sha256"] for s in shards if isinstance(s, dict) and "sha256" in s}
        manifest.unlink()
    wanted = {shard_name(k) for k in range(n_shards)}
    for tmp in stale_temp_files(split_dir, "shard-*.h5"):
        tmp.unlink(missing_ok=True)
    for path in sorted(split_dir.glob("shard-*.h5")):
        try:
            with h5py.File(path, "r") as f:
                theirs = json.loads(f.attrs[SETTINGS_ATTR])
        except (OSError, KeyError, ValueError):
            log.warning("%s cannot be read; it will be extracted again", path)
            path.unlink()
            continue
        if theirs != settings:
            raise _other_settings(split_dir, f"{path.name}: " + "; ".join(setting_differences(theirs, settings)))
        if path.name not in wanted:
            path.unlink()
    return known


def reusable_shard(split_dir: str | Path, k: int, rows: tuple[int, int], dim: int, dtype: str,
                   known_sha: dict[str, str]) -> dict | None:
    """The manifest entry of a finished shard k that can be kept, else None (a bad one is deleted).

    Its settings were checked by prepare_split_dir; it must hold exactly its rows [start, stop) as
    [stop - start, dim] `dtype` embeddings, and if the previous manifest lists it, still have the
    SHA-256 recorded there."""
    path = Path(split_dir) / shard_name(k)
    if not path.is_file():
        return None
    start, stop = rows
    try:
        with h5py.File(path, "r") as f:
            emb, idx = f["embeddings"], f["indices"]
            ok = (emb.shape == (stop - start, dim) and emb.dtype == np.dtype(dtype)
                  and f["labels"].shape == idx.shape == (stop - start,)
                  and (start == stop or (idx[0] == start and idx[-1] == stop - 1)))
    except (OSError, KeyError):
        ok = False
    digest = file_sha256(path) if ok else None
    if ok and known_sha.get(path.name, digest) != digest:
        ok = False
    if not ok:
        log.warning("%s is not the finished shard this extraction needs; extracting it again", path)
        path.unlink()
        return None
    return {"name": path.name, "rows": stop - start, "sha256": digest}


def keep_finished_shards(split_dir: str | Path, shards, n_rows: int, rows_per_shard: int, dim: int, dtype: str,
                         known_sha: dict[str, str]) -> tuple[dict[int, dict], list[int]]:
    """Split the shard numbers `shards` (those this process writes) into ({k: manifest entry} of the
    finished ones kept, [k still to write]), in the order given."""
    kept, todo = {}, []
    for k in shards:
        entry = reusable_shard(split_dir, k, shard_rows(k, n_rows, rows_per_shard), dim, dtype, known_sha)
        if entry is not None:
            kept[k] = entry
        else:
            todo.append(k)
    return kept, todo


def keep_leading_shards(split_dir: str | Path, rows_per_shard: int, dim: int,
                        dtype: str) -> tuple[dict[int, dict], np.ndarray]:
    """For a run whose shards fill R rows each, in order, rows skipped between them (latent vectors):
    ({k: manifest entry} of the finished shards 0, 1, ... it keeps, int64 [k * R] their rows' indices).

    A shard is kept while it holds R `dtype` rows [R, dim] with indices rising past the previous
    shard's; the first that does not (missing, the short last shard of a cut-off run, unreadable)
    and every later one are deleted. Settings were checked by prepare_split_dir."""
    split_dir = Path(split_dir)
    kept, indices = {}, [np.empty(0, np.int64)]
    while (path := split_dir / shard_name(len(kept))).is_file():
        try:
            with h5py.File(path, "r") as f:
                emb, idx = f["embeddings"], f["indices"][:]
                ok = (emb.shape == (rows_per_shard, dim) and emb.dtype == np.dtype(dtype)
                      and f["labels"].shape == idx.shape == (rows_per_shard,) and bool(np.all(np.diff(idx) > 0))
                      and idx[0] > (indices[-1][-1] if kept else -1))
        except (OSError, KeyError):
            ok = False
        if not ok:
            break
        kept[len(kept)] = {"name": path.name, "rows": rows_per_shard, "sha256": file_sha256(path)}
        indices.append(idx.astype(np.int64))
    names = {entry["name"] for entry in kept.values()}
    for path in split_dir.glob("shard-*.h5"):
        if path.name not in names:
            log.warning("%s is not a finished shard this run can keep; writing it again", path)
            path.unlink()
    return kept, np.concatenate(indices)
