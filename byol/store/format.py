"""The feature-store format's names and constants, shared by its reader and writer (no h5py here)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from byol.atomic import file_sha256


FORMAT = "byol-feature-store"
VERSION = 1
MANIFEST = "manifest.json"
FIELDS = ("embeddings", "labels", "indices", "paths")
# Provenance keys that decide whether two stores' features live in the same space.
ENCODER_KEYS = ("encoder", "checkpoint_sha256", "image_size", "normalisation", "layer")
DTYPES = ("float32", "float16")


def shard_name(index: int) -> str:
    """File name of shard `index`: zero-padded so names sort in row order."""
    return f"shard-{index:05d}.h5"


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
