"""Stage 1 input: datasets by name. Every dataset yields (uint8 [3, S, S], int label) per item,
label -1 for unlabeled images, and has `classes`, `name` and an int64 `labels` array.

    stl10.py         STL-10's official binary files, read record by record; download + MD5
    cifar.py         CIFAR-10 / CIFAR-100's official pickle batches (restricted unpickler), in memory
    download.py      the official archives: fetched once under a lock, MD5-checked, extracted
    image_folder.py  a user's folder of images, decoded (any mode) to RGB uint8
    digits.py        scikit-learn's embedded 8x8 digits (the no-download demo)
    augment.py       the paper's two views (+ multi-crop), batched on the training device, per sample
    crops.py         a folder's training crops, cut in the DataLoader workers from the whole image
    batches.py       reading rows [start, stop) ahead of the consumer (extraction, latent vectors)
    input_list.py    latent vectors' inputs (files, folders, lists, splits) as one dataset
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Subset

from byol.base.errors import DataError
from byol.config import CHOICES
from byol.data.cifar import CIFAR10, CIFAR100, CIFARS
from byol.data.cifar import SIDE as CIFAR_SIDE
from byol.data.crops import FolderCropViews
from byol.data.digits import Digits
from byol.data.image_folder import ImageFolder
from byol.data.stl10 import SIDE as STL10_SIDE
from byol.data.stl10 import STL10

__all__ = ["CIFAR10", "CIFAR100", "Digits", "FolderCropViews", "ImageFolder", "STL10", "build_dataset",
           "build_training_dataset", "dataset_labels"]


def build_dataset(data_cfg, image_size: int, split: str | None = None) -> Dataset:
    """The dataset `data_cfg` (config.Data) names, at `split` (default data_cfg.split), with items
    (uint8 [3, image_size, image_size], int label)."""
    split = data_cfg.split if split is None else split
    if data_cfg.name == "stl10":
        return STL10(data_cfg.root, split, image_size, download=data_cfg.download,
                     max_images=data_cfg.max_images)
    if data_cfg.name in CIFARS:
        return CIFARS[data_cfg.name](data_cfg.root, split, image_size, download=data_cfg.download,
                                     max_images=data_cfg.max_images)
    if data_cfg.name == "folder":
        return ImageFolder(data_cfg.root, split, image_size, on_bad_image=data_cfg.on_bad_image,
                           max_images=data_cfg.max_images)
    if data_cfg.name == "digits":
        return Digits(split, image_size, max_images=data_cfg.max_images)
    raise DataError(f"unknown dataset data.name={data_cfg.name!r}; valid: {', '.join(CHOICES['data.name'])}")


def build_training_dataset(cfg, seed: int) -> Dataset:
    """What pretraining reads (`cfg`: a config.Config). Views are always cut from the whole source
    image: a folder's in the DataLoader workers (crops.py: items are dicts of crops); STL-10 at its
    native 96 px and CIFAR at its 32 px, whatever the view size, and cropped on the device
    (augment.py); the 8x8 digits at the view size (below it, upsampling first loses nothing)."""
    data, tf = cfg.data, cfg.data_transforms
    size = tf.input_shape[0]
    if data.name == "folder":
        from byol.data.augment import default_local_size
        folder = ImageFolder(data.root, data.split, size, on_bad_image=data.on_bad_image,
                             max_images=data.max_images)
        return FolderCropViews(folder, size, tf.min_scale, seed, tf.local_crops,
                               tf.local_size or default_local_size(size), tf.local_scale)
    if data.name == "stl10":
        return build_dataset(data, STL10_SIDE)
    if data.name in CIFARS:
        return build_dataset(data, CIFAR_SIDE)
    return build_dataset(data, size)


def dataset_labels(ds) -> np.ndarray:
    """Labels of every item as int64 [N], from the `labels` array when there is one (no decoding)."""
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[np.asarray(ds.indices, np.int64)]
    labels = getattr(ds, "labels", None)
    if labels is not None:
        return np.asarray(labels, np.int64)
    return np.array([int(ds[i][1]) for i in range(len(ds))], np.int64)
