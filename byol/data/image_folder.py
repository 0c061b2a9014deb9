"""Users' own images: a folder (optionally with one subfolder per class) -> uint8 [3, S, S].

Real folders hold surprises: zero-byte files, text files named .jpg, CMYK JPEGs, 16-bit PNGs,
palette images with transparency, phone photos rotated by EXIF, truncated downloads. Each is
either converted to a correct-looking RGB image or, by `on_bad_image`, skipped (and counted in
the log) or reported as a one-line DataError naming the file. Pillow's decompression-bomb limit
stays in force; an image over it is a bad image like any other.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from byol.base.errors import DataError

log = logging.getLogger("byol")

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
WHOLE_FOLDER_SPLITS = ("train", "train+unlabeled", "unlabeled", "all")   # may read ROOT itself


def split_folders(root: Path, split: str) -> tuple[Path, list[Path]]:
    """-> (folder that relative paths start from, folders to scan) for `split`.

    ROOT/<split>/ when it exists; 'a+b' reads the existing ROOT/a/ and ROOT/b/; a training split
    falls back to ROOT itself, unless ROOT has a test/ subfolder (it is then split by folders and
    reading it whole would train on the test images)."""
    if not root.is_dir():
        raise DataError(f"image folder '{root}' not found; set data.root=... to your image folder")
    if (root / split).is_dir():
        return root / split, [root / split]
    parts = [root / p for p in split.split("+") if p and (root / p).is_dir()]
    if "+" in split and parts:
        return root, parts
    if split in WHOLE_FOLDER_SPLITS:
        if split != "all" and (root / "test").is_dir():
            raise DataError(f"image folder '{root}' has a test/ subfolder but no {split}/ folder; "
                            f"set data.split to the subfolder to read (e.g. data.split=train)")
        return root, [root]
    raise DataError(f"image folder '{root / split}' not found (data.split={split!r}); create it, "
                    f"or use data.split=train to read '{root}' itself")


def find_images(folders: list[Path], base: Path) -> list[tuple[Path, str | None]]:
    """Image files (by extension, case-insensitive; hidden ones ignored) as (path, class name or
    None when directly in a scanned folder), sorted by path relative to `base`."""
    found = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS:
                    path = Path(dirpath, name)
                    parts = path.relative_to(folder).parts
                    found.append((path, parts[0] if len(parts) > 1 else None))
    return sorted(found, key=lambda item: item[0].relative_to(base).as_posix())


def _header_problem(path: Path) -> str | None:
    """Why `path` is not a usable image, judged from its header alone (cheap); None if it looks fine."""
    try:
        with Image.open(path) as im:   # raises DecompressionBombError over Pillow's limit
            width, height = im.size
    except Exception as e:   # Pillow raises many types on malformed files
        return f"{type(e).__name__}: {e}"
    return None if width > 0 and height > 0 else "image has no pixels"


def _high_depth_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float pixels [H, W] -> uint8 [H, W], scaled (converting clips instead)."""
    a = np.nan_to_num(a.astype(np.float64))
    if mode.startswith("I;16") or (mode == "I" and a.min() >= 0 and a.max() <= 65535):
        scaled = a / 257.0   # the 16-bit range: 65535 / 257 == 255
    elif mode == "F" and a.min() >= 0 and a.max() <= 1:
        scaled = a * 255.0
    else:   # 32-bit or float data of unknown range: stretch it
        scaled = (a - a.min()) / max(a.max() - a.min(), 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparent pixels become white."""
    if im.mode.startswith("I") or im.mode == "F":
        return Image.fromarray(_high_depth_to_uint8(np.asarray(im), im.mode)).convert("RGB")
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def decode_image(path: Path, size: int) -> np.ndarray:
    """Image file -> uint8 [S, S, 3]: upright (EXIF), RGB, shorter side resized to S, centre crop."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))   # DCT-domain downscale: big photos decode much faster
        rgb = _to_rgb(ImageOps.exif_transpose(im))
    width, height = rgb.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    square = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    return np.asarray(square)


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF rotation that exif_transpose applies, read from the header."""
    width, height = im.size
    return (height, width) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (width, height)


def decode_crops(path: Path, boxes_for) -> list[np.ndarray]:
    """Random-resized crops cut from the *whole* decoded image (Table 6: crop the original, then
    resize), at its own aspect ratio. `boxes_for(height, width)` gets the upright full-resolution
    size and returns [(int [n, 4] boxes (top, left, h, w), output side S), ...]; the result is one
    uint8 [n, S, S, 3] array per entry. A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8)
    at which every crop still has at least S pixels per side, so a 12-MP photo costs about as much
    as its largest needed thumbnail; bilinear resizing with Pillow's support scaling antialiases."""
    with Image.open(path) as im:
        width, height = _oriented_size(im)
        requests = boxes_for(height, width)
        if im.format == "JPEG":
            # the reduction every crop allows: its shorter side over its output side
            reduction = min((min(float(b[:, 2].min()), float(b[:, 3].min())) / side
                             for b, side in requests if len(b)), default=1.0)
            if reduction >= 2.0:
                raw_w, raw_h = im.size
                im.draft("RGB", (math.ceil(raw_w / reduction), math.ceil(raw_h / reduction)))
        rgb = _to_rgb(ImageOps.exif_transpose(im))
    sx, sy = rgb.size[0] / width, rgb.size[1] / height
    out = []
    for boxes, side in requests:
        crops = [np.asarray(rgb.resize((side, side), Image.Resampling.BILINEAR,
                                       box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy)))
                 for top, left, h, w in boxes.tolist()]
        out.append(np.stack(crops) if crops else np.zeros((0, side, side, 3), np.uint8))
    return out


class ImageFolder(Dataset):
    """Images under a folder -> (uint8 [3, S, S], label); label -1 where there is no class folder."""

    name = "folder"

    def __init__(self, root, split: str, image_size: int, on_bad_image: str = "skip",
                 max_images: int = 0):
        if on_bad_image not in ("skip", "error"):
            raise DataError(f"on_bad_image must be skip or error, got {on_bad_image!r}")
        self.root, self.split, self.image_size = Path(root), split, image_size
        self.on_bad_image = on_bad_image
        self.folder, folders = split_folders(self.root, split)
        found = find_images(folders, self.folder)
        if not found:
            raise DataError(f"image folder '{self.folder}' holds no images ({' '.join(EXTENSIONS)}); "
                            f"set data.root=... to a folder of images")
        # Classes come from every candidate file, so a class whose files are all bad keeps its index.
        self.classes = sorted({cls for _, cls in found if cls is not None})
        class_index = {cls: k for k, cls in enumerate(self.classes)}
        self.paths, labels, self.skipped = [], [], []
        for path, cls in found:
            if max_images > 0 and len(self.paths) >= max_images:
                break
            problem = _header_problem(path)
            if problem is None:
                self.paths.append(path)
                labels.append(class_index.get(cls, -1))
            elif on_bad_image == "error":
                raise DataError(f"'{path}' is not a readable image ({problem}); fix or remove it, "
                                f"or set data.on_bad_image=skip")
            else:
                self.skipped.append((path.relative_to(self.folder).as_posix(), problem))
        self.labels = np.asarray(labels, np.int64)   # int64 [N]
        if self.skipped:
            log.warning("skipped %d of %d files in '%s' that are not readable images (first: %s: %s)",
                        len(self.skipped), len(self.skipped) + len(self.paths), self.folder,
                        *self.skipped[0])
        if not self.paths:
            raise DataError(f"image folder '{self.folder}' holds no readable images "
                            f"({len(self.skipped)} files skipped)")
        self.decode_failures = 0     # per process: each DataLoader worker counts its own
        self._undecodable: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def relative_path(self, i: int) -> str:
        return self.paths[i].relative_to(self.folder).as_posix()

    def load(self, i: int) -> torch.Tensor:
        """Decode image i -> uint8 [3, S, S]; DataError naming the file if it cannot be decoded."""
        try:
            pixels = decode_image(self.paths[i], self.image_size)
        except Exception as e:   # truncated data, bombs, unsupported modes, ...
            raise DataError(f"cannot decode image '{self.paths[i]}': {type(e).__name__}: {e}") from None
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()

    def load_crops(self, i: int, boxes_for) -> list[torch.Tensor]:
        """Crops of image i (see `decode_crops`) -> uint8 [n, 3, S, S] each; DataError naming the file."""
        try:
            crops = decode_crops(self.paths[i], boxes_for)
        except Exception as e:   # truncated data, bombs, unsupported modes, ...
            raise DataError(f"cannot decode image '{self.paths[i]}': {type(e).__name__}: {e}") from None
        return [torch.from_numpy(c).permute(0, 3, 1, 2).contiguous() for c in crops]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.read(i, self.load)

    def read(self, i: int, load):
        """(load(j), label j) for the first decodable image j from i on. With on_bad_image=skip an
        undecodable image is replaced by the next readable one, so a single bad file cannot stop a
        long training run; it is logged once per process."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for '{self.folder}' ({len(self)} images)")
        for j in (k % len(self) for k in range(i, i + len(self))):
            if j in self._undecodable:
                continue
            try:
                return load(j), int(self.labels[j])
            except DataError as e:
                if self.on_bad_image == "error":
                    raise
                self._undecodable.add(j)
                self.decode_failures += 1
                log.warning("%s; using the next image instead", e)
        raise DataError(f"no image in '{self.folder}' can be decoded")
