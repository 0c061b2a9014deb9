"""Training a head (MLP, or linear = softmax regression) over row blocks of the store, streaming.

Each epoch reads the selected training rows as a shuffle buffer of randomly chosen blocks (so a
class-sorted store still gives mixed minibatches) and takes AdamW steps (Loshchilov & Hutter 2019,
decoupled weight decay, as torch.optim.AdamW) on minibatches. Memory is one shuffle buffer (about
64 MB of features) plus the weights and the optimiser's two moments, whatever the number of rows.
All in numpy (byol.evaluate.heads says why): evaluation never imports torch.

Honest selection: with a validation split, a first model is trained on the training rows outside
it for up to `epochs` epochs, scored on the validation rows after each; the best epoch count is then
used to refit a fresh model (same seed) on all training rows, and that final model's test figure
is the one reported. Without a validation split (--val-fraction 0) the model trains for `epochs`.
The shuffled epoch, the validation figures and test scoring are byol.evaluate.passes's, shared
with logistic regression's streaming fallback.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from byol.evaluate.heads import Head, build_head, cross_entropy
from byol.evaluate.passes import Curve, epoch_rng, run_epochs, shuffled_epoch, validation_scores


class AdamW:
    """torch.optim.AdamW's update (betas 0.9/0.999, eps 1e-8, bias-corrected), in place on numpy arrays."""

    def __init__(self, params: list[np.ndarray], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.weight_decay, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.exp_avg = [np.zeros_like(p) for p in params]
        self.exp_avg_sq = [np.zeros_like(p) for p in params]
        self.steps = 0

    def step(self, grads: list[np.ndarray]) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1 ** self.steps)
        correction2_sqrt = np.sqrt(1 - beta2 ** self.steps)
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            if self.weight_decay:
                p *= 1 - self.lr * self.weight_decay
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            update = np.sqrt(v)                                  # one temporary per parameter
            update /= correction2_sqrt
            update += self.eps
            np.divide(m, update, out=update)
            update *= step_size
            p -= update


def _new_head(kind, in_dim, data, opts, mean, std, seed) -> Head:
    return build_head(kind, in_dim, data.n_classes, opts.hidden, opts.dropout, seed=seed, classes=data.classes,
                      mean=mean, std=std)


def train_epoch(model: Head, optimizer: AdamW, data, mask: np.ndarray, opts, epoch: int,
                transform: Callable | None) -> float:
    """One pass over the selected rows in shuffled blocks; returns the mean training loss."""
    rng = epoch_rng(opts.seed, epoch)
    total, count = 0.0, 0
    for chunk in shuffled_epoch(data.train, mask, opts.block_rows, rng, transform, f"epoch {epoch + 1}"):
        x = np.ascontiguousarray(chunk["embeddings"], np.float32)        # [n, in_dim]
        y = data.encode(chunk["labels"])                                 # [n] class positions
        for start in range(0, len(y), opts.batch_size):
            xb, yb = x[start:start + opts.batch_size], y[start:start + opts.batch_size]
            logits, cache = model.forward_train(xb, rng)
            loss, grad = cross_entropy(logits, yb)
            optimizer.step(model.backward(cache, grad))
            total, count = total + loss * len(yb), count + len(yb)
        del chunk, x, y    # free this shuffle buffer before the next one is read
    return total / max(count, 1)


def fit(model: Head, data, mask: np.ndarray, epochs: int, opts, transform: Callable | None = None,
        validate: bool = False) -> Curve:
    """Train for `epochs`; with validate, returns (validation top-1 %, validation cross-entropy) after
    each epoch (otherwise empty)."""
    optimizer = AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)

    def one_epoch(epoch: int) -> float:
        return train_epoch(model, optimizer, data, mask, opts, epoch, transform)

    def on_validation() -> tuple[float, float]:
        return validation_scores(model.probabilities, data, opts.block_rows, transform)

    return run_epochs(one_epoch, epochs, on_validation if validate else None)


def best_epoch(curve: Curve) -> int:
    """1-based epoch with the best validation top-1; ties (a small validation split often reaches
    100% early) go to the lower validation cross-entropy, so saturation doesn't pick an undertrained epoch."""
    return min(range(len(curve)), key=lambda i: (-curve[i][0], curve[i][1])) + 1


def fit_selected(data, opts, kind: str, mean=None, std=None, transform: Callable | None = None
                 ) -> tuple[Head, dict]:
    """Choose the number of epochs on the validation split, then refit on all training rows.

    mean/std: input standardisation kept in the head (None: 0/1). transform: applied to each block first
    (e.g. a PCA projection); the head's in_dim is its output width.
    """
    in_dim = getattr(transform, "out_dim", data.train.dim)
    if data.val_mask.any():
        probe = _new_head(kind, in_dim, data, opts, mean, std, opts.seed)
        curve = fit(probe, data, data.fit_mask, opts.epochs, opts, transform, validate=True)
        epochs = best_epoch(curve)
        selection = {"on": "validation", "max_epochs": opts.epochs, "val_top1": [c[0] for c in curve],
                     "val_loss": [round(c[1], 6) for c in curve], "best_val_top1": curve[epochs - 1][0],
                     "rule": "best validation top-1, ties to the lower validation cross-entropy"}
    else:
        epochs, selection = opts.epochs, {"on": "flag (no validation split)"}
    model = _new_head(kind, in_dim, data, opts, mean, std, opts.seed)
    fit(model, data, data.train_mask, epochs, opts, transform)
    info = {"selected": {"epochs": epochs}, "selection": selection, "streams": True, "solver": "numpy AdamW",
            "optimizer": {"name": "adamw", "lr": opts.lr, "weight_decay": opts.weight_decay,
                          "batch_size": opts.batch_size}}
    if kind == "mlp":
        info.update(hidden=list(opts.hidden), dropout=opts.dropout)
    return model, info
