"""Neighbours to look at: RUN_DIR/neighbors.png, what a number cannot show.

A fixed set of test images (the first of each class where labels exist, at most 10; else evenly
spaced rows), each followed by its 5 nearest training images under BYOL's features and, beside
them, under the starting weights' features (the same queries). A green border: the neighbour's
class matches the query's; red: it does not; grey: unlabeled. Neighbours come from the project's
one kNN code (`byol.base.knn.nearest_rows`, cosine, as the kNN probe); the thumbnails
from the dataset readers (STL-10, CIFAR, folders, digits), found through each store's saved config and
row indices, so the gallery needs nothing but the stores and the images they were computed from.
RUN_DIR/neighbors.json lists the same neighbours as dataset item numbers (test queries, train
neighbours), for a closer look.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from byol.base.atomic import atomic_savefig, atomic_write_text

MATCH, MISMATCH, UNKNOWN, QUERY = "#2ca02c", "#d62728", "#999999", "#000000"


def query_rows(labels: np.ndarray, max_queries: int = 10) -> np.ndarray:
    """Store rows of the gallery's queries: the first row of each class (sorted), at most
    `max_queries` classes; without labels, `max_queries` evenly spaced rows."""
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    if len(classes):
        return np.array([np.flatnonzero(labels == c)[0] for c in classes[:max_queries]], np.int64)
    return np.unique(np.linspace(0, len(labels) - 1, min(max_queries, len(labels))).astype(np.int64))


def thumbnails(store, rows: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, 3, size, size] images of store rows `rows`, read by the dataset reader the store's
    extraction used (its saved config and split; the row's `indices` entry is the dataset item)."""
    from byol.config import load_config
    from byol.data import build_dataset
    cfg = load_config(None, [], base=store.attrs.get("config") or {})
    dataset = build_dataset(cfg.data, size, store.attrs.get("split") or cfg.data.split)
    items = store.take(rows, "indices")
    return np.stack([np.asarray(dataset[int(i)][0]) for i in items]) if len(items) else \
        np.zeros((0, 3, size, size), np.uint8)


def gallery_neighbours(train, test, queries: np.ndarray, k: int = 5) -> np.ndarray:
    """Rows [n, k] of the `train` store nearest to rows `queries` of the `test` store, best first."""
    from byol.base.knn import nearest_rows
    _, rows = nearest_rows(train, test.take(queries), k)
    return rows


def rows_of_items(store, items: np.ndarray) -> np.ndarray:
    """The rows of `store` holding dataset items `items` (two stores of one split may list their rows in
    different orders: the gallery matches the queries by item, never by row number)."""
    from byol.base.errors import StoreError
    row_of = {int(item): row for row, item in enumerate(store.indices())}
    missing = [int(i) for i in items if int(i) not in row_of]
    if missing:
        raise StoreError(f"{store.split_dir}: holds no row for dataset item {missing[0]}, a gallery query; "
                         f"the two stores were not extracted from the same split")
    return np.array([row_of[int(i)] for i in items], np.int64)


def write_gallery(stores: dict, out: Path, k: int = 5, size: int = 64) -> Path:
    """RUN_DIR/neighbors.png from `stores` {"byol_train", "byol_test"[, "start_train", "start_test"]}
    (store directories); the starting weights' half is left out when their stores are absent."""
    from byol.store import FeatureStore
    test = FeatureStore.open(stores["byol_test"])
    train = FeatureStore.open(stores["byol_train"])
    labels = test.labels()
    queries = query_rows(labels)
    query_items = test.take(queries, "indices")
    panels = [("BYOL", train, gallery_neighbours(train, test, queries, k))]      # (title, train store, rows)
    if stores.get("start_train") and stores.get("start_test"):
        start_train, start_test = FeatureStore.open(stores["start_train"]), FeatureStore.open(stores["start_test"])
        panels.append(("starting weights", start_train, gallery_neighbours(
            start_train, start_test, rows_of_items(start_test, query_items), k)))
    query_images = thumbnails(test, queries, size)
    names = list(test.attrs.get("classes") or [])
    atomic_write_text(out / "neighbors.json", json.dumps({   # the same neighbours, as dataset items
        "queries": query_items.tolist(), "query_labels": labels[queries].tolist(),
        "neighbours": {title: np.where(rows >= 0, store.indices()[rows], -1).tolist() for title, store, rows in panels},
        "metric": "cosine", "k": k}, indent=1) + "\n")
    return _draw(query_images, labels[queries], panels, names, out / "neighbors.png", size)


def _draw(query_images, query_labels, panels, names, path: Path, size: int) -> Path:
    import matplotlib
    matplotlib.use("Agg")                     # files only, no display
    import matplotlib.pyplot as plt
    n, k = len(query_images), panels[0][2].shape[1]
    cols = len(panels) * (k + 2) - 1          # per panel: query, k neighbours, a spacer between panels
    fig, axes = plt.subplots(n, cols, figsize=(cols * 0.8, n * 0.8 + 0.5), squeeze=False,
                             gridspec_kw={"wspace": 0.08, "hspace": 0.08})
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.axis("off")
    for p, (title, train, rows) in enumerate(panels):
        left = p * (k + 2)
        train_labels = train.labels()
        neighbour_images = thumbnails(train, rows[rows >= 0], size)
        images = iter(neighbour_images)
        axes[0, left + 1].set_title(f"{title}: {k} nearest training images", loc="left", fontsize=8)
        for i in range(n):
            _tile(axes[i, left], query_images[i], QUERY, class_name(names, query_labels[i]))
            for j in range(k):
                if rows[i, j] < 0:
                    continue
                label = train_labels[rows[i, j]]
                colour = UNKNOWN if min(label, query_labels[i]) < 0 else \
                    (MATCH if label == query_labels[i] else MISMATCH)
                _tile(axes[i, left + 1 + j], next(images), colour, None)
    fig.suptitle("Test queries (left of each panel) and their nearest training images; "
                 "green = same class, red = other class", fontsize=8)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=1 - 0.5 / (n * 0.8 + 0.5))
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


def class_name(names: list, label: int) -> str:
    """A label's class name (its number where the store lists no names; 'unlabeled' for -1)."""
    return names[label] if 0 <= label < len(names) else ("unlabeled" if label < 0 else str(label))


def _tile(ax, image_chw: np.ndarray, colour: str, caption: str | None) -> None:
    ax.axis("on")
    ax.imshow(np.transpose(image_chw, (1, 2, 0)), interpolation="nearest")
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    if caption:
        ax.set_ylabel(caption, fontsize=7)
