"""Training a head (MLP, or linear = softmax regression) over row blocks of the store, streaming.

Each epoch reads the selected training rows as a shuffle buffer of randomly chosen blocks (so a
class-sorted store still gives mixed minibatches) and takes AdamW steps on minibatches. Memory is
one shuffle buffer (about 64 MB of features) plus the model, whatever the number of rows.

Honest selection: with a validation split, a first model is trained on the training rows outside
it for up to `epochs` epochs, scored on the validation rows after each; the best epoch count is then
used to refit a fresh model (same seed) on all training rows, and that final model's test figure
is the one reported. Without a validation split (--val-fraction 0) the model trains for `epochs`.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from byol.evaluate.blocks import SHUFFLE_BLOCK_BYTES, SHUFFLE_BLOCKS, iter_rows, progress, rows_for, transformed
from byol.evaluate.heads import Head, build_head
from byol.evaluate.results import accuracy


def _new_head(kind, in_dim, data, opts, mean, std, seed) -> Head:
    torch.manual_seed(seed)
    return build_head(kind, in_dim, data.n_classes, opts.hidden, opts.dropout, classes=data.classes,
                      mean=mean, std=std)


def train_epoch(model: Head, optimizer, data, mask: np.ndarray, opts, epoch: int,
                transform: Callable | None) -> float:
    """One pass over the selected rows in shuffled blocks; returns the mean training loss."""
    model.train()
    rng = np.random.default_rng([opts.seed, epoch])
    block = rows_for(data.train.dim, opts.block_rows, SHUFFLE_BLOCK_BYTES)
    loss_fn, total, count = nn.CrossEntropyLoss(), 0.0, 0
    with progress(data.train.n_rows, f"epoch {epoch + 1}") as bar:
        blocks = iter_rows(data.train, mask, block, rng=rng, mix=SHUFFLE_BLOCKS, bar=bar)
        for chunk in transformed(blocks, transform):
            x = torch.from_numpy(np.ascontiguousarray(chunk["embeddings"], np.float32))
            y = torch.from_numpy(data.encode(chunk["labels"]))
            for start in range(0, len(y), opts.batch_size):
                loss = loss_fn(model(x[start:start + opts.batch_size]), y[start:start + opts.batch_size])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = min(opts.batch_size, len(y) - start)
                total, count = total + loss.item() * n, count + n
            del chunk, x, y    # free this shuffle buffer before the next one is read
    return total / max(count, 1)


@torch.no_grad()
def predict_blocks(model: Head, store, mask: np.ndarray, block_rows: int, transform: Callable | None = None,
                   desc: str = "predict") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(class probabilities [n, C], original labels [n]) for the selected rows, block by block."""
    model.eval()
    with progress(store.n_rows, desc) as bar:
        for chunk in transformed(iter_rows(store, mask, block_rows, bar=bar), transform):
            x = torch.from_numpy(np.ascontiguousarray(chunk["embeddings"], np.float32))
            yield model(x).softmax(dim=1).numpy(), chunk["labels"]


def fit(model: Head, data, mask: np.ndarray, epochs: int, opts, transform: Callable | None = None,
        val_mask: np.ndarray | None = None) -> list[float]:
    """Train for `epochs`; returns the validation top-1 (%) after each epoch (empty without val_mask)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    curve = []
    for epoch in range(epochs):
        train_epoch(model, optimizer, data, mask, opts, epoch, transform)
        if val_mask is not None:
            hits = n = 0
            scored = predict_blocks(model, data.train, val_mask, opts.block_rows, transform, "validation")
            for probs, labels in scored:
                hits += accuracy(probs, data.encode(labels)) * len(labels) / 100
                n += len(labels)
            curve.append(100.0 * hits / max(n, 1))
    return curve


def fit_selected(data, opts, kind: str, mean=None, std=None, transform: Callable | None = None
                 ) -> tuple[Head, dict]:
    """Choose the number of epochs on the validation split, then refit on all training rows.

    mean/std: input standardisation kept in the head (None: 0/1). transform: applied to each block first
    (e.g. a PCA projection); the head's in_dim is its output width.
    """
    in_dim = getattr(transform, "out_dim", data.train.dim)
    if data.val_mask.any():
        probe = _new_head(kind, in_dim, data, opts, mean, std, opts.seed)
        curve = fit(probe, data, data.fit_mask, opts.epochs, opts, transform, data.val_mask)
        epochs = int(np.argmax(curve)) + 1
        selection = {"on": "validation", "max_epochs": opts.epochs, "val_top1": curve,
                     "best_val_top1": float(max(curve))}
    else:
        epochs, selection = opts.epochs, {"on": "flag (no validation split)"}
    model = _new_head(kind, in_dim, data, opts, mean, std, opts.seed)
    fit(model, data, data.train_mask, epochs, opts, transform)
    info = {"selected": {"epochs": epochs}, "selection": selection, "streams": True,
            "optimizer": {"name": "adamw", "lr": opts.lr, "weight_decay": opts.weight_decay,
                          "batch_size": opts.batch_size}}
    if kind == "mlp":
        info.update(hidden=list(opts.hidden), dropout=opts.dropout)
    return model, info
