"""Classification heads on stored embeddings: the module, its file, and what it computes.

A head standardises its input with the training split's mean/std (held in the module), then
applies `hidden` Linear+ReLU(+Dropout) layers and a final Linear classifier. `kind="linear"`
(no hidden layers) is multinomial logistic regression (softmax).

File (`torch.save` of a plain dict; `torch.load(path, weights_only=True)` reads it):

    {"format": "byol-head", "version": 1, "kind": "mlp" | "linear", "in_dim": int, "hidden": [int],
     "dropout": float, "n_classes": int, "classes": [int] (the original label of each output),
     "mean": tensor [in_dim], "std": tensor [in_dim], "state_dict": {name: tensor},
     "store_attrs": {...} (encoder provenance of the training store), "metrics": {...}}

Use: `model, meta = load_head(path)`, then `head_outputs(model, embeddings)` gives the hidden
activations, class probabilities and predicted class of a batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from byol.atomic import atomic_path
from byol.errors import CheckpointError

FORMAT = "byol-head"
VERSION = 1
KINDS = ("mlp", "linear")


class Head(nn.Module):
    """standardise -> [Linear, ReLU, Dropout] x len(hidden) -> Linear; forward gives logits."""

    def __init__(self, in_dim: int, hidden: list[int], n_classes: int, dropout: float = 0.0,
                 classes=None, mean=None, std=None):
        super().__init__()
        layers, width = [], in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, n_classes)
        self.in_dim, self.hidden, self.dropout, self.n_classes = in_dim, list(hidden), float(dropout), n_classes
        # Not in state_dict: the file keeps them as top-level "mean"/"std"/"classes".
        self.register_buffer("mean", torch.zeros(in_dim) if mean is None else torch.as_tensor(mean).float(),
                             persistent=False)
        self.register_buffer("std", torch.ones(in_dim) if std is None else torch.as_tensor(std).float(),
                             persistent=False)
        classes = range(n_classes) if classes is None else classes
        self.register_buffer("classes", torch.as_tensor(np.asarray(classes), dtype=torch.int64), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input of the final classifier: last hidden activations (the standardised input for linear)."""
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_head(kind: str, in_dim: int, n_classes: int, hidden=(512,), dropout: float = 0.0, **kwargs) -> Head:
    if kind not in KINDS:
        raise ValueError(f"head kind must be one of {KINDS}, got {kind!r}")
    return Head(in_dim, list(hidden) if kind == "mlp" else [], n_classes, dropout if kind == "mlp" else 0.0,
                **kwargs)


class HeadOutputs(NamedTuple):
    hidden: np.ndarray | torch.Tensor   # [n, h] last hidden layer (standardised input for linear heads)
    probs: np.ndarray | torch.Tensor    # [n, n_classes] softmax probabilities, columns = meta["classes"]
    pred: np.ndarray | torch.Tensor     # [n] predicted class, as an original label


@torch.no_grad()
def head_outputs(model: Head, embeddings, batch_size: int = 65536) -> HeadOutputs:
    """Hidden activations, class probabilities and predicted class (original label) of a batch.

    embeddings [n, in_dim], numpy or torch; the outputs are of the same kind (numpy in, numpy out).
    The model is put in eval mode (dropout off).
    """
    as_numpy = isinstance(embeddings, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)) if as_numpy else embeddings.float()
    model.eval()
    x = x.to(model.mean.device)
    hidden, probs = [], []
    for start in range(0, x.shape[0], batch_size):
        h = model.features(x[start:start + batch_size])
        hidden.append(h)
        probs.append(model.classifier(h).softmax(dim=1))
    hidden = torch.cat(hidden) if hidden else x.new_zeros(0, model.classifier.in_features)
    probs = torch.cat(probs) if probs else x.new_zeros(0, model.n_classes)
    pred = model.classes[probs.argmax(dim=1)]
    if as_numpy:
        return HeadOutputs(hidden.cpu().numpy(), probs.cpu().numpy(), pred.cpu().numpy())
    return HeadOutputs(hidden, probs, pred)


def head_record(model: Head, kind: str, store_attrs: dict, metrics: dict) -> dict:
    """The plain dict saved to the head file (tensors and primitives only)."""
    return {"format": FORMAT, "version": VERSION, "kind": kind, "in_dim": model.in_dim, "hidden": model.hidden,
            "dropout": model.dropout, "n_classes": model.n_classes,
            "classes": [int(c) for c in model.classes.tolist()],
            "mean": model.mean.detach().cpu().clone(), "std": model.std.detach().cpu().clone(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "store_attrs": _plain(store_attrs), "metrics": _plain(metrics)}


def save_head(path: str | Path, record: dict) -> Path:
    """torch.save atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return Path(path)


def load_head(path: str | Path, map_location="cpu") -> tuple[Head, dict]:
    """(model in eval mode, the file's dict without state_dict). CheckpointError if it isn't a head file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such head file: train one with eval/load_and_train.py")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a head file"
        raise CheckpointError(f"{path}: not a readable head file ({type(e).__name__}: {e})") from None
    found = record.get("format") if isinstance(record, dict) else type(record).__name__
    if found != FORMAT:
        raise CheckpointError(f"{path}: not a byol-head file (format {found!r})")
    if int(record.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path}: head file version {record['version']} is newer than this library reads")
    model = build_head(record["kind"], int(record["in_dim"]), int(record["n_classes"]), record["hidden"],
                       float(record["dropout"]), classes=record.get("classes"), mean=record["mean"],
                       std=record["std"])
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights don't fit the recorded architecture ({e})") from None
    model.to(map_location).eval()
    return model, {k: v for k, v in record.items() if k != "state_dict"}


def _plain(value):
    """JSON-like values only (weights_only loading refuses numpy scalars and other objects)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
