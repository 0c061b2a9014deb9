"""An interactive view of the test embeddings: TensorBoard's projector (PCA, t-SNE, UMAP) with
labels and image thumbnails.

    tensorboard --logdir runs/demo/tensorboard      # then the PROJECTOR tab

At most 2,000 test rows, stratified by class (each class keeps its share), written by
TensorBoard's own writer (`SummaryWriter.add_embedding`: tensors.tsv, metadata.tsv, sprite.png and
projector_config.pbtxt under RUN_DIR/tensorboard) once for BYOL's features (tag `byol`) and once
for the starting weights' features on the same rows (tag `start`), so the two spaces can be
compared point by point. A rerun rewrites the projector's config with the new entries.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from byol.report.gallery import class_name, thumbnails


def stratified_rows(labels: np.ndarray, max_rows: int, seed: int = 0) -> np.ndarray:
    """Sorted rows, at most `max_rows`, each class (and the unlabeled, -1) keeping its share: rows
    are ranked by (random rank within their class) / (class size) and the first max_rows taken."""
    labels = np.asarray(labels)
    if len(labels) <= max_rows:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    key = np.empty(len(labels))
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        key[rows] = (rng.permutation(len(rows)) + rng.random(len(rows))) / len(rows)
    return np.sort(np.argsort(key, kind="stable")[:max_rows])


def write_projector(log_dir: Path, test_stores: dict, max_rows: int = 2000, thumbnail: int = 32,
                    seed: int = 0) -> Path:
    """Embeddings of `test_stores` {tag: test store directory} (the first one chooses the rows and
    the thumbnails) for TensorBoard's projector under `log_dir`; returns its projector_config.pbtxt."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from byol.store import FeatureStore
    stores = {tag: FeatureStore.open(path) for tag, path in test_stores.items() if path}
    first = next(iter(stores.values()))
    labels = first.labels()
    rows = stratified_rows(labels, max_rows, seed)
    names = list(first.attrs.get("classes") or [])
    metadata = [class_name(names, y) for y in labels[rows]]
    sprite = torch.from_numpy(thumbnails(first, rows, thumbnail)).float().div_(255)   # [n, 3, t, t] in [0, 1]
    log_dir = Path(log_dir)
    for tag in stores:          # add_embedding warns (on stdout) about a folder an earlier report left
        shutil.rmtree(log_dir / "00000" / tag, ignore_errors=True)
    with SummaryWriter(str(log_dir)) as writer:
        for tag, store in stores.items():
            if len(store) != len(first):
                raise ValueError(f"{store.split_dir} has {len(store)} rows, {first.split_dir} {len(first)}: "
                                 "the projector compares the same test images")
            writer.add_embedding(torch.from_numpy(store.take(rows)), metadata=metadata, label_img=sprite,
                                 tag=tag)
    return log_dir / "projector_config.pbtxt"
