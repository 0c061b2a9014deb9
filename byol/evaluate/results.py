"""Top-k accuracy, confusion matrices, and results files that never overwrite earlier ones.

Results go beside the features, `<train>/../results/<method>.json` with `<method>-confusion.csv`
and `<method>-confusion.npy`. When any of those exists the next free suffix is used
(`<method>-2.json`, `<method>-3.json`, ...), so nothing is overwritten silently; `overwrite=True`
(`--overwrite`) replaces `<method>.*` instead. The JSON names the files it went to.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from byol.base.atomic import atomic_path, atomic_write_text

CONFUSION_SUFFIXES = (".json", "-confusion.csv", "-confusion.npy", "-predictions.npy")


def encode(classes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Original labels -> positions in the sorted `classes`; -1 for labels not among them."""
    pos = np.searchsorted(classes, labels).clip(0, len(classes) - 1)
    return np.where(classes[pos] == labels, pos, -1).astype(np.int64)


def topk_correct(scores: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """[n] bool: the target class is among the k highest scores (targets -1 never count)."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return (top == targets[:, None]).any(axis=1) & (targets >= 0)


class Tally:
    """Accumulates top-1/top-5 hits and the confusion matrix over test blocks.

    classes: the model's classes (column order of the scores); labels: every label the confusion
    matrix lists (training classes and test labels), sorted.
    """

    def __init__(self, classes: np.ndarray, labels: np.ndarray):
        self.classes = np.asarray(classes)
        self.labels = np.union1d(self.classes, np.asarray(labels))
        self.confusion = np.zeros((len(self.labels), len(self.labels)), np.int64)
        self.n = self.hit1 = self.hit5 = 0
        self.rows: list[np.ndarray] = []      # per block: [n, 2] (true label, predicted label), in row order

    def update(self, scores: np.ndarray, true_labels: np.ndarray) -> None:
        """scores [n, C] (any monotone score: probabilities, votes, logits); true_labels [n] original labels."""
        targets = encode(self.classes, true_labels)
        pred = scores.argmax(axis=1)
        self.n += len(true_labels)
        self.hit1 += int(((pred == targets) & (targets >= 0)).sum())
        if len(self.classes) >= 5:
            self.hit5 += int(topk_correct(scores, targets, 5).sum())
        rows = np.searchsorted(self.labels, true_labels)
        cols = np.searchsorted(self.labels, self.classes[pred])
        np.add.at(self.confusion, (rows, cols), 1)
        self.rows.append(np.stack([np.asarray(true_labels, np.int64), self.classes[pred].astype(np.int64)], axis=1))

    def predictions(self, items: np.ndarray) -> np.ndarray:
        """int64 [n, 3]: (dataset item, true label, predicted label) of every scored row, `items` being the
        scored rows' dataset items in the order they were tallied (what a paired comparison of two
        probes joins on: byol.evaluate.paired)."""
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, 2), np.int64)
        if len(items) != len(rows):
            raise ValueError(f"{len(items)} items for {len(rows)} scored rows")
        return np.concatenate([np.asarray(items, np.int64)[:, None], rows], axis=1)

    def metrics(self) -> dict:
        """{"top1": %, "top5": % (only with >= 5 classes)}."""
        out = {"top1": 100.0 * self.hit1 / max(self.n, 1)}
        if len(self.classes) >= 5:
            out["top5"] = 100.0 * self.hit5 / max(self.n, 1)
        return out


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy in % of scores [n, C] against class positions [n]."""
    return 100.0 * float((scores.argmax(axis=1) == targets).mean()) if len(targets) else 0.0


def default_dir(train_dir: str | Path, name: str) -> Path:
    """`<train>/../<name>`: results and heads live beside the features."""
    return Path(train_dir).resolve().parent / name


def free_stem(directory: Path, name: str, suffixes=CONFUSION_SUFFIXES, overwrite: bool = False) -> str:
    """`name`, or the first `name-2`, `name-3`, ... with none of `<stem><suffix>` present."""
    if overwrite:
        return name
    n = 1
    while True:
        stem = name if n == 1 else f"{name}-{n}"
        if not any((directory / f"{stem}{s}").exists() for s in suffixes):
            return stem
        n += 1


def _claim(path: Path, overwrite: bool) -> bool:
    """Create `path` exclusively (another run may be choosing a name at the same moment)."""
    if overwrite:
        return True
    try:
        with open(path, "x"):
            return True
    except FileExistsError:
        return False


def write_confusion_csv(path: Path, confusion: np.ndarray, labels: np.ndarray) -> None:
    lines = ["true\\pred," + ",".join(str(int(v)) for v in labels)]
    lines += [f"{int(label)}," + ",".join(str(int(v)) for v in row) for label, row in zip(labels, confusion)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_results(result: dict, confusion: np.ndarray, labels: np.ndarray, directory: str | Path,
                  name: str, overwrite: bool = False, predictions: np.ndarray | None = None) -> dict:
    """Write result JSON + confusion CSV/.npy (+ the per-row predictions [n, 3] of Tally.predictions as
    `<stem>-predictions.npy`) under a free stem; returns result with the file paths added."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    while True:
        stem = free_stem(directory, name, overwrite=overwrite)
        if _claim(directory / f"{stem}.json", overwrite):
            break
    result = dict(result, results_file=str(directory / f"{stem}.json"),
                  confusion_csv=str(directory / f"{stem}-confusion.csv"),
                  confusion_npy=str(directory / f"{stem}-confusion.npy"),
                  confusion_labels=[int(v) for v in labels])
    write_confusion_csv(Path(result["confusion_csv"]), confusion, labels)
    arrays = {"confusion_npy": confusion}
    if predictions is not None:
        result["predictions_npy"] = str(directory / f"{stem}-predictions.npy")
        arrays["predictions_npy"] = predictions
    for key, array in arrays.items():
        with atomic_path(result[key]) as tmp, open(tmp, "wb") as f:   # np.save(path) would add .npy
            np.save(f, array)
    atomic_write_text(result["results_file"], json.dumps(result, indent=2) + "\n")
    return result
