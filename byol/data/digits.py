"""The embedded demo dataset: scikit-learn's digits, shipped with scikit-learn (no download)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from byol.base.errors import DataError

DIGITS_SPLITS = ("train", "test", "train+unlabeled", "unlabeled", "all")
# scikit-learn's stratified 20% test split (random_state=0), as rows: computing it means importing
# scikit-learn, 1.7 s at every start of a command on the digits; tests/test_data.py checks the file
TEST_ROWS_FILE = Path(__file__).with_name("digits_test_rows.txt")


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(float64 [1797, 8, 8] in 0..16, int64 [1797]): what sklearn.datasets.load_digits() returns as
    images and target, read from the file scikit-learn ships without importing scikit-learn; through
    load_digits() itself where that file is not where scikit-learn 1.x keeps it."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits
        digits = load_digits()
        return digits.images, digits.target.astype(np.int64)
    data = np.loadtxt(path, delimiter=",")          # as load_digits: 64 pixels then the label, per row
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


class Digits(Dataset):
    """scikit-learn's 1797 real 8x8 handwritten digits: a demo dataset that needs no download.

    The test split is a fixed stratified 20% (random_state=0), so results are comparable between
    runs and machines. The unlabeled splits are the train images with their labels kept (they are
    simply not used by self-supervised training)."""

    name = "digits"
    classes = [str(d) for d in range(10)]

    def __init__(self, split: str = "train", image_size: int = 32, max_images: int = 0):
        if split not in DIGITS_SPLITS:
            raise DataError(f"unknown digits split {split!r}; valid splits: {', '.join(DIGITS_SPLITS)}")
        self.split, self.image_size = split, image_size
        images, target = load_digits_arrays()
        everything = np.arange(len(target))
        test = np.loadtxt(TEST_ROWS_FILE, dtype=np.int64)
        chosen = {"test": test, "all": everything}.get(split, np.setdiff1d(everything, test))
        if max_images > 0:
            chosen = chosen[:max_images]
        self.labels = target[chosen]                                   # int64 [N]
        self.images = _digits_to_uint8(images[chosen], image_size)     # uint8 [N, 3, S, S]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """indices [N] -> (uint8 [N, 3, S, S], int64 [N])."""
        idx = torch.as_tensor(np.asarray(indices, np.int64))
        return self.images[idx], torch.from_numpy(self.labels)[idx]


def _digits_to_uint8(images: np.ndarray, size: int) -> torch.Tensor:
    """float [N, 8, 8] in 0..16 -> uint8 [N, 3, S, S] (bilinear, grey repeated to 3 channels)."""
    grey = torch.from_numpy(images * (255.0 / 16.0)).float().unsqueeze(1)
    if size != grey.shape[-1]:
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)
    grey = grey.round_().clamp_(0, 255).to(torch.uint8)
    return grey.expand(-1, 3, -1, -1).contiguous()


