"""Training views of an image folder, cut per sample in the DataLoader workers from the whole image.

BYOL (Grill et al. 2020, Table 6), like every reference implementation (DeepMind's byol,
solo-learn, lightly, mmpretrain), takes its random-resized crop from the *decoded original* at its
own aspect ratio and resizes the crop to the view size. Decoding a folder to view-size squares
first and cropping those would (a) never show anything outside the centre square and (b) blow a
small crop of an already-shrunk thumbnail up into a blurred patch. So for folders, where images
differ in size, the crop boxes are drawn here and cut from the decoded file (JPEG draft decoding to
the coarsest scale that keeps every crop sharp: image_folder.decode_crops); only the photometric
ops (flip, jitter, grayscale, blur, solarize, normalisation) run batched on the training device
(augment.py). Fixed-size sources (STL-10, the digits) are cropped on the device instead, from
their native resolution.

Exact resumption: an item's crops are a pure function of (seed, epoch, index): `set_epoch` is
called before each epoch's iterator is created (the workers, not persistent, copy the dataset
then), so a resumed run cuts the very crops an uninterrupted run would have.

Item: ({"global": uint8 [2, 3, S, S], "local": uint8 [K, 3, s, s]}, label).
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from byol.data.augment import crop_boxes, random_crop_params
from byol.data.image_folder import ImageFolder


class FolderCropViews(Dataset):
    """An ImageFolder's training items: two global crops (scale in [min_scale, 1]) and `local_crops`
    local ones (scale in `local_scale`) per image, cut from the full decoded image."""

    def __init__(self, folder: ImageFolder, size: int, min_scale: float, seed: int,
                 local_crops: int = 0, local_size: int = 8, local_scale: tuple[float, float] = (0.05, 0.3)):
        self.folder, self.size, self.min_scale, self.seed = folder, int(size), float(min_scale), int(seed)
        self.local_crops, self.local_size, self.local_scale = int(local_crops), int(local_size), local_scale
        self.epoch = 0
        self.labels, self.classes, self.name = folder.labels, folder.classes, folder.name

    def __len__(self) -> int:
        return len(self.folder)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, i: int) -> torch.Generator:
        """The crop randomness of item i in this epoch: a pure function of (seed, epoch, i)."""
        key = ((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + int(i)) % (2 ** 63)
        return torch.Generator().manual_seed(key)

    def __getitem__(self, i: int):
        g = self.generator(i)
        draws = [(random_crop_params(2, (self.min_scale, 1.0), g), self.size)]
        if self.local_crops:
            draws.append((random_crop_params(self.local_crops, self.local_scale, g), self.local_size))

        def boxes_for(height: int, width: int):
            return [(crop_boxes(params, height, width), side) for params, side in draws]

        crops, label = self.folder.read(i, lambda j: self.folder.load_crops(j, boxes_for))
        local = crops[1] if self.local_crops else torch.zeros(0, 3, self.local_size, self.local_size,
                                                               dtype=torch.uint8)
        return {"global": crops[0], "local": local}, label
