"""The feature-store format's names and constants, shared by its reader and writer (no h5py here)."""
from __future__ import annotations

import json
import os

import numpy as np


FORMAT = "byol-feature-store"
VERSION = 1
MANIFEST = "manifest.json"
FIELDS = ("embeddings", "labels", "indices", "paths")
SETTINGS_ATTR = "settings_json"   # the shard attribute holding the run's settings (JSON, keys sorted)
DTYPES = ("float32", "float16")
MAX_CHUNK_BYTES = 4 * 2**20     # largest HDF5 chunk: a read of a few rows stays cheap; extraction appends whole chunks

# The keys that decide whether two stores' rows live in the same feature space (byol.store.check_compatible).
# A key is compared only when both stores record it; everything else (split, data root, shard size,
# storage dtype, precision, ...) may differ between, say, a train and a test store.
#   FEATURE_ATTRS     keys of the provenance dict `attrs` (manifest["attrs"], shard attributes): which
#                     encoder computed the rows and how its input was preprocessed.
#   FEATURE_SETTINGS  keys of the run's `settings` dict (manifest["settings"], SETTINGS_ATTR): the same
#                     identity as recorded by the run, plus "augment" (byol's commands never augment
#                     and do not write it; a store from another tool that embedded augmented views does).
FEATURE_ATTRS = ("encoder", "checkpoint_sha256", "image_size", "normalisation", "layer")
FEATURE_SETTINGS = FEATURE_ATTRS + ("augment",)


def shard_name(index: int) -> str:
    """File name of shard `index`: zero-padded so names sort in row order."""
    return f"shard-{index:05d}.h5"


def chunk_rows(row_bytes: int, limit: int = 1024) -> int:
    """Rows per HDF5 chunk of a dataset whose rows take `row_bytes`: at most `limit`, and at most
    MAX_CHUNK_BYTES a chunk (so reading a few rows never decompresses or checksums more than 4 MB)."""
    return max(1, min(int(limit), MAX_CHUNK_BYTES // max(1, int(row_bytes))))


def _json_default(value):
    """Provenance dicts often carry numpy scalars and paths; store them as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(value, **kwargs) -> str:
    return json.dumps(value, default=_json_default, **kwargs)
