"""The train and test stores of one evaluation: opened, checked, and the validation split carved.

Hyper-parameters are chosen on a validation split carved from the *training* store by a seeded
permutation of its labelled rows; the test store is only read to compute the final figures. Rows
labelled -1 (unlabeled) take no part in supervised evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byol.base.errors import StoreError
from byol.evaluate.results import encode
from byol.store import FeatureStore, check_compatible


def open_store(path: str | Path, role: str, verify: bool = True) -> FeatureStore:
    """Open a split (checking every shard's SHA-256 when verify) and refuse an empty one."""
    store = FeatureStore.open(path, verify=verify)
    if store.n_rows == 0:
        raise StoreError(f"{store.split_dir}: the {role} store is empty (0 rows): extract some images first")
    return store


def check_pair(train: FeatureStore, test: FeatureStore) -> None:
    """Train and test must share the feature space: dim, encoder provenance (attrs) and the settings
    that define it (byol.store.format FEATURE_ATTRS / FEATURE_SETTINGS); split, shard size, dtype may differ."""
    check_compatible(train, test, ("dim", "encoder", "feature-settings"))


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation rows: the first round(fraction x n) of a seeded permutation
    of the labelled rows (label >= 0); at least one row when fraction > 0 and >= 2 rows are labelled."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    labelled = np.flatnonzero(labels >= 0)
    n_val = int(round(fraction * len(labelled)))
    if fraction > 0 and len(labelled) >= 2:
        n_val = min(max(n_val, 1), len(labelled) - 1)
    chosen = np.random.default_rng(seed).permutation(labelled)[:n_val]
    mask = np.zeros(len(labels), bool)
    mask[chosen] = True
    return mask


def _labelled(store: FeatureStore, labels: np.ndarray, role: str) -> np.ndarray:
    if not (labels >= 0).any():
        raise StoreError(f"{store.split_dir}: the {role} store has no labelled rows (all labels are -1): "
                         "supervised evaluation needs labels; extract a labelled split")
    return labels >= 0


@dataclass
class EvalData:
    """Stores, labels and row selections of one evaluation (masks are over each store's rows).

    train_mask: labelled training rows (the final fit); fit_mask/val_mask: its split for selection;
    test_mask: labelled test rows. `classes` are the sorted training labels; models predict their
    position (encode()), and results report the original labels.
    """
    train: FeatureStore
    test: FeatureStore
    train_labels: np.ndarray
    test_labels: np.ndarray
    train_mask: np.ndarray
    fit_mask: np.ndarray
    val_mask: np.ndarray
    test_mask: np.ndarray
    classes: np.ndarray
    val_fraction: float
    seed: int

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Original labels -> class positions 0..C-1; -1 for labels the training split lacks."""
        return encode(self.classes, labels)

    def counts(self) -> dict:
        return {"n_train": int(self.train_mask.sum()), "n_val": int(self.val_mask.sum()),
                "n_test": int(self.test_mask.sum()), "n_classes": self.n_classes}


def prepare(train_dir: str | Path, test_dir: str | Path, val_fraction: float = 0.1, seed: int = 0,
            verify: bool = True) -> EvalData:
    """Open both stores, check they are comparable and labelled, carve the validation split."""
    train = open_store(train_dir, "train", verify)
    test = open_store(test_dir, "test", verify)
    check_pair(train, test)
    train_labels, test_labels = train.labels(), test.labels()
    train_mask = _labelled(train, train_labels, "train")
    test_mask = _labelled(test, test_labels, "test")
    classes = np.unique(train_labels[train_mask])
    if len(classes) < 2:
        raise StoreError(f"{train.split_dir}: the train store has a single class (label {classes[0]}): "
                         "a classifier needs at least two")
    val_mask = carve_validation(train_labels, val_fraction, seed)
    fit_mask = train_mask & ~val_mask
    if val_mask.any() and len(np.unique(train_labels[fit_mask])) < 2:
        raise StoreError(f"{train.split_dir}: after carving the validation split the training rows hold a "
                         "single class: lower --val-fraction (0 turns selection off)")
    return EvalData(train, test, train_labels, test_labels, train_mask, fit_mask, val_mask, test_mask,
                    classes, float(val_fraction), int(seed))
