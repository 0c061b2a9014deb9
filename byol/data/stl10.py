"""STL-10 read straight from the official binary files, one record at a time.

The unlabeled file alone is 2.7 GB, so nothing is loaded or memory-mapped whole: each process
opens the files lazily (DataLoader workers fork, and a forked descriptor must not be shared) and
reads records with `os.pread`, which needs no seek and so no lock.

Layout of `ROOT/stl10_binary/`: `*_X.bin` hold uint8 images of 3*96*96 bytes, channel-major and
then column-major (as torchvision reads them); `*_y.bin` hold one uint8 label 1..10 per image;
`fold_indices.txt` holds 10 lines of 0-based indices into train.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from byol.base.errors import DataError
from byol.data.download import download_archive, download_once

URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"   # torchvision's constants
MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
ARCHIVE = "stl10_binary.tar.gz"
FOLDER = "stl10_binary"
SIDE = 96
RECORD = 3 * SIDE * SIDE
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SPLITS = "train, test, unlabeled, train+unlabeled, train-fold-0 .. train-fold-9"


class _RecordFile:
    """One `*_X.bin`: `count` images, read by record number through a per-process descriptor."""

    def __init__(self, path: Path):
        self.path, self._fd, self._pid = path, None, None
        size = path.stat().st_size
        if size % RECORD:
            raise DataError(f"STL-10 file '{path}' is truncated: {size} bytes is not a multiple of "
                            f"{RECORD} (one 3x96x96 image); delete it and set data.download=true")
        self.count = size // RECORD

    def _fileno(self) -> int:
        if self._pid != os.getpid():   # first use in this process (e.g. a fresh DataLoader worker)
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def read(self, start: int, n: int) -> np.ndarray:
        """Records start..start+n-1 -> uint8 [n, 3, 96, 96] (CHW, row-major, writable)."""
        fd, want, offset, chunks = self._fileno(), n * RECORD, start * RECORD, []
        while want:
            chunk = os.pread(fd, want, offset)
            if not chunk:
                raise DataError(f"STL-10 file '{self.path}' is truncated (changed while reading)")
            chunks.append(chunk)
            want, offset = want - len(chunk), offset + len(chunk)
        raw = np.frombuffer(b"".join(chunks), np.uint8).reshape(n, 3, SIDE, SIDE)
        return raw.transpose(0, 1, 3, 2).copy()   # stored column-major: swap to (row, col)

    def __getstate__(self):   # a descriptor means nothing in another process
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def _required_files(split: str) -> list[str]:
    """Files a split needs; raises DataError listing the valid splits for an unknown one."""
    parts = {"train": ["train_X.bin", "train_y.bin"], "test": ["test_X.bin", "test_y.bin"],
             "unlabeled": ["unlabeled_X.bin"]}
    if split in parts:
        return parts[split]
    if split == "train+unlabeled":
        return parts["train"] + parts["unlabeled"]
    if re.fullmatch(r"train-fold-\d", split):
        return parts["train"] + ["fold_indices.txt"]
    raise DataError(f"unknown STL-10 split {split!r}; valid splits: {SPLITS}")


def _missing(folder: Path, split: str) -> list[Path]:
    return [folder / f for f in _required_files(split) if not (folder / f).is_file()]


def _read_labels(path: Path, images: _RecordFile) -> np.ndarray:
    """`*_y.bin` -> int64 [N] labels 0..9, checked against the image count."""
    labels = np.fromfile(path, np.uint8).astype(np.int64) - 1
    if len(labels) != images.count:
        raise DataError(f"STL-10 file '{path}' holds {len(labels)} labels but '{images.path}' holds "
                        f"{images.count} images; the files do not belong together (re-download)")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"STL-10 file '{path}' holds labels outside 1..10; it is not an STL-10 label file")
    return labels


def _read_fold(path: Path, fold: int, n_train: int) -> np.ndarray:
    """Line `fold` of fold_indices.txt -> int64 indices into train, range-checked."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if fold >= len(lines):
        raise DataError(f"STL-10 file '{path}' has {len(lines)} folds, no fold {fold}; valid splits: {SPLITS}")
    try:
        idx = np.array([int(t) for t in lines[fold].split()], np.int64)
    except ValueError:
        raise DataError(f"STL-10 file '{path}' line {fold + 1} is not space-separated integers") from None
    if len(idx) and (idx.min() < 0 or idx.max() >= n_train):
        raise DataError(f"STL-10 file '{path}' fold {fold} has indices outside 0..{n_train - 1}")
    return idx


class STL10(Dataset):
    """STL-10 split -> (uint8 [3, S, S], label 0..9, or -1 for unlabeled images)."""

    name = "stl10"

    def __init__(self, root, split: str, image_size: int = 96, download: bool = False,
                 max_images: int = 0):
        self.root, self.split, self.image_size = Path(root), split, image_size
        folder = self.root / FOLDER
        missing = _missing(folder, split)
        if missing and download:
            _download_once(self.root)
            missing = _missing(folder, split)
        if missing:
            raise DataError(f"STL-10 file '{missing[0]}' not found; set data.download=true to fetch it, "
                            f"or data.root=... to point at stl10_binary/'s parent")
        names = folder / "class_names.txt"
        self.classes = [ln.strip() for ln in names.read_text().splitlines() if ln.strip()] \
            if names.is_file() else list(CLASSES)
        self._files, file_ids, records, labels = [], [], [], []
        for part in ("train", "unlabeled") if split == "train+unlabeled" else (split.split("-")[0],):
            images = _RecordFile(folder / f"{part}_X.bin")
            part_labels = _read_labels(folder / f"{part}_y.bin", images) if part != "unlabeled" \
                else np.full(images.count, -1, np.int64)
            part_records = np.arange(images.count, dtype=np.int64)
            if split.startswith("train-fold-"):
                part_records = _read_fold(folder / "fold_indices.txt", int(split[-1]), images.count)
            file_ids.append(np.full(len(part_records), len(self._files), np.int64))
            records.append(part_records)
            labels.append(part_labels[part_records])
            self._files.append(images)
        keep = slice(0, max_images) if max_images > 0 else slice(None)
        self._file_ids = np.concatenate(file_ids)[keep]
        self._records = np.concatenate(records)[keep]
        self.labels = np.concatenate(labels)[keep]   # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for STL-10 {self.split} ({len(self)} images)")
        image = self._files[self._file_ids[i]].read(int(self._records[i]), 1)
        return self._resize(torch.from_numpy(image))[0], int(self.labels[i])

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """indices [N] -> (uint8 [N, 3, S, S], int64 [N]), in the order given.

        Records are read in sorted contiguous runs (one pread per run), so reading a whole split
        in order costs a few large sequential reads instead of one syscall per image."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for STL-10 {self.split} ({len(self)} images)")
        out = np.empty((len(idx), 3, SIDE, SIDE), np.uint8)
        for file_id, images in enumerate(self._files):
            where = np.flatnonzero(self._file_ids[idx] == file_id)
            if not len(where):
                continue
            unique, inverse = np.unique(self._records[idx[where]], return_inverse=True)
            breaks = np.flatnonzero(np.diff(unique) != 1) + 1
            runs = [images.read(int(run[0]), len(run)) for run in np.split(unique, breaks)]
            out[where] = np.concatenate(runs)[inverse.reshape(-1)]
        return self._resize(torch.from_numpy(out)), torch.from_numpy(self.labels[idx])

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, 96, 96] -> uint8 [N, 3, S, S] (a no-op at 96)."""
        return resize_uint8(images, self.image_size)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> uint8 [N, 3, size, size], antialiased bilinear (CIFAR's reader uses it
    too); the input itself when it already has that size."""
    if images.shape[-2:] == (size, size):
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _download_once(root: Path) -> None:
    """Download under a file lock, so that several ranks starting together fetch it once."""
    needed = _required_files("train+unlabeled") + _required_files("test")
    download_once(root, "stl10", lambda: all((root / FOLDER / f).is_file() for f in needed),
                  lambda: download_stl10(root))


def download_stl10(root, url: str | None = None, md5: str | None = None, progress: bool = True) -> Path:
    """Fetch the official archive to ROOT, check its MD5, extract ROOT/stl10_binary/; return that
    (byol/data/download.py: an interrupted or corrupted download never passes for the archive)."""
    return download_archive(root, url or URL, md5 or MD5, ARCHIVE, progress) / FOLDER
