"""The embedded demo dataset: scikit-learn's digits, shipped with scikit-learn (no download)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from byol.base.errors import DataError

DIGITS_SPLITS = ("train", "test", "train+unlabeled", "unlabeled", "all")


class Digits(Dataset):
    """scikit-learn's 1797 real 8x8 handwritten digits: a demo dataset that needs no download.

    The test split is a fixed stratified 20% (random_state=0), so results are comparable between
    runs and machines. The unlabeled splits are the train images with their labels kept (they are
    simply not used by self-supervised training)."""

    name = "digits"
    classes = [str(d) for d in range(10)]

    def __init__(self, split: str = "train", image_size: int = 32, max_images: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in DIGITS_SPLITS:
            raise DataError(f"unknown digits split {split!r}; valid splits: {', '.join(DIGITS_SPLITS)}")
        self.split, self.image_size = split, image_size
        digits = load_digits()
        everything = np.arange(len(digits.target))
        train, test = train_test_split(everything, test_size=0.2, random_state=0,
                                       stratify=digits.target)
        chosen = {"test": np.sort(test), "all": everything}.get(split, np.sort(train))
        if max_images > 0:
            chosen = chosen[:max_images]
        self.labels = digits.target[chosen].astype(np.int64)          # int64 [N]
        self.images = _digits_to_uint8(digits.images[chosen], image_size)   # uint8 [N, 3, S, S]

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


