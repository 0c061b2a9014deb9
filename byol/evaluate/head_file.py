"""A trained head's file: safetensors (weights) + JSON metadata, written atomically, read without pickle.

    heads/mlp.safetensors
        tensors   body.{3i}.weight [h_i, in], body.{3i}.bias [h_i], classifier.weight [C, h], classifier.bias [C],
                  mean [in_dim], std [in_dim] (float32; the training split's standardisation), classes [C] int64
        metadata  {"format": "byol-head", "version": "2", "head": JSON of kind, in_dim, hidden, dropout,
                   n_classes, classes, store_attrs (encoder provenance of the training store), metrics}

Why safetensors: it holds only arrays and strings (nothing to unpickle, so a head file from anyone
is safe to open), it is written from numpy without torch, and torch reads it too:
`safetensors.torch.load_file(path)` gives a state dict for the equivalent nn.Sequential (see
byol.evaluate.heads). Version 1 files (`torch.save` of a dict, written before this project's first
release) are not read: loading one is an error that names it and says to retrain the head.

Use: `head, meta = load_head(path)`; `save_head(path, head_record(head, kind, store_attrs, metrics))`;
`load_head_for(path, dim, checkpoint_sha256)` for an encoder's rows (latent vectors), checked against it.
"""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from byol.base.atomic import atomic_write_bytes
from byol.base.errors import CheckpointError, ConfigError
from byol.evaluate.heads import Head, build_head
from byol.store.format import to_json

log = logging.getLogger("byol")

FORMAT = "byol-head"
VERSION = 2
SUFFIX = ".safetensors"


def head_record(head: Head, kind: str, store_attrs: dict, metrics: dict) -> dict:
    """What save_head writes: {"tensors": {name: array}, "meta": dict (numpy scalars and arrays become JSON)}."""
    tensors = {k: np.ascontiguousarray(v) for k, v in head.state_dict().items()}
    tensors.update(mean=head.mean, std=head.std, classes=head.classes)
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "in_dim": head.in_dim, "hidden": head.hidden,
            "dropout": head.dropout, "n_classes": head.n_classes, "classes": [int(c) for c in head.classes],
            "store_attrs": store_attrs, "metrics": metrics}
    return {"tensors": tensors, "meta": meta}


def save_head(path: str | Path, record: dict) -> Path:
    """Write atomically (temp file + fsync + rename): the old file, if any, stays until the new one is whole."""
    import safetensors.numpy

    return atomic_write_bytes(path, safetensors.numpy.save(
        record["tensors"], metadata={"format": FORMAT, "version": str(VERSION), "head": to_json(record["meta"])}))


def load_head(path: str | Path) -> tuple[Head, dict]:
    """(head, its metadata: kind, in_dim, hidden, dropout, n_classes, classes, store_attrs, metrics).

    CheckpointError naming the file when it is missing, not a head file, or its weights don't fit.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such head file: train one with eval/load_and_train.py")
    if zipfile.is_zipfile(path):                    # torch.save's format: a version 1 head file
        raise CheckpointError(f"{path}: a version 1 head file (torch.save, written before byol's first release), "
                              f"which this version no longer reads; retrain the head with eval/load_and_train.py")
    tensors, meta = _read_safetensors(path)
    try:
        head = build_head(meta["kind"], int(meta["in_dim"]), int(meta["n_classes"]), meta["hidden"],
                          float(meta["dropout"]), classes=meta["classes"], mean=tensors.pop("mean"),
                          std=tensors.pop("std"))
        tensors.pop("classes", None)
        head.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: weights don't fit the recorded architecture ({e}); "
                              f"retrain the head with eval/load_and_train.py") from None
    return head, meta


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a head file"
        raise CheckpointError(f"{path}: not a readable head file ({type(e).__name__}: {e}); "
                              f"train one with eval/load_and_train.py") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a byol-head file (format {header.get('format')!r})")
    if int(header.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path}: head file version {header['version']} is newer than this library reads; "
                              f"upgrade byol")
    try:
        meta = json.loads(header["head"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: head file without readable metadata") from None
    return tensors, meta


def load_head_for(path: str | Path, dim: int, checkpoint_sha256: str | None) -> Head:
    """load_head for the `dim`-d rows of an encoder: ConfigError if the head takes other rows; a
    warning if it was trained on the features of another checkpoint than `checkpoint_sha256`."""
    head, meta = load_head(path)
    if int(meta["in_dim"]) != dim:
        raise ConfigError(f"--head '{path}' takes {meta['in_dim']}-d inputs but the encoder gives "
                          f"{dim}-d vectors; use the head trained on this encoder's features")
    theirs = (meta.get("store_attrs") or {}).get("checkpoint_sha256")
    if theirs and theirs != checkpoint_sha256:
        log.warning("--head was trained on features of another checkpoint (sha256 %s...); its outputs "
                    "may be meaningless here", str(theirs)[:12])
    return head
