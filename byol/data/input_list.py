"""Latent vectors' inputs as one dataset: image files and dataset splits, in the order given.

`expand_inputs` turns --input arguments (files, folders, LIST.txt, split:NAME: byol/extract/latent_command.py) into
entries. Row i of `InputList` is input i: an image file, decoded as image folders decode them
(`decode_image`) or, where it cannot be (missing, zero bytes, not an image, truncated, over
Pillow's decompression-bomb limit), skipped with the reason; or one row of a dataset split, with
its label and its relative path (or row number). It reads its own rows (`read_rows`), so
byol.data.batches reads it ahead like any dataset, in DataLoader workers too.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from byol.base.errors import ConfigError
from byol.data.batches import Rows, read_rows
from byol.data.image_folder import EXTENSIONS, decode_image, find_images

log = logging.getLogger("byol")

SPLIT_PREFIX = "split:"


def expand_inputs(inputs: list[str]) -> list[str]:
    """Input arguments -> an ordered list of file paths and `split:NAME` entries."""
    out = []
    for item in map(str, inputs):
        path = Path(item).expanduser()
        if item.startswith(SPLIT_PREFIX):
            if not item[len(SPLIT_PREFIX):]:
                raise ConfigError(f"--input {item!r}: give a split name, e.g. split:test")
            out.append(item)
        elif path.is_dir():
            found = find_images([path], path)
            if not found:
                log.warning("folder '%s' holds no image files (%s)", path, " ".join(EXTENSIONS))
            out += [str(p) for p, _ in found]
        elif path.suffix.lower() == ".txt" and path.is_file():
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            out += [str(path.parent / Path(line).expanduser()) for line in lines if line and not line.startswith("#")]
        else:
            out.append(str(path))   # a missing file is reported as skipped, not fatal
    return out


def _decode_file(path: str, size: int) -> tuple[torch.Tensor | None, str | None]:
    """(uint8 [3, S, S], None) or (None, why the file is not an image)."""
    try:
        if not os.path.isfile(path):
            return None, "not a file (missing or a directory)"
        if os.path.getsize(path) == 0:
            return None, "zero-byte file"
        pixels = decode_image(Path(path), size)
    except Exception as e:   # Pillow raises many kinds on bad files; bombs raise DecompressionBombError
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return torch.from_numpy(np.array(pixels, np.uint8)).permute(2, 0, 1).contiguous(), None


class InputList(Dataset):
    """entries: image file paths (str), or (NAME, dataset) for every row of a dataset, whose paths
    read NAME/<relative path or row number>. Labels: -1 for files, the dataset's for its rows."""

    def __init__(self, entries: list, image_size: int):
        self.entries, self.image_size = entries, image_size
        sizes = [len(e[1]) if isinstance(e, tuple) else 1 for e in entries]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)   # [E + 1]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read_rows(self, start: int, stop: int) -> Rows:
        """Rows [start, stop): the readable ones in order; files that are not images in `skipped`."""
        parts, skipped = [], []
        e = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while e < len(self.entries) and self.offsets[e] < stop:
            a, b = max(start, int(self.offsets[e])), min(stop, int(self.offsets[e + 1]))
            entry = self.entries[e]
            if isinstance(entry, tuple) and a < b:
                name, dataset = entry
                rows = read_rows(dataset, a - int(self.offsets[e]), b - int(self.offsets[e]))
                names = rows.paths if rows.paths is not None else [str(i) for i in rows.indices]
                parts.append((rows.images, rows.labels, rows.indices + int(self.offsets[e]),
                              [f"{name}/{n}" for n in names]))
            elif not isinstance(entry, tuple):
                image, reason = _decode_file(entry, self.image_size)
                if image is None:
                    skipped.append({"index": a, "path": entry, "reason": reason})
                else:
                    parts.append((image[None], np.full(1, -1, np.int64), np.array([a], np.int64), [entry]))
            e += 1
        if not parts:
            return Rows(start, stop, torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8),
                        np.empty(0, np.int64), np.empty(0, np.int64), [], skipped)
        return Rows(start, stop, torch.cat([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                    np.concatenate([p[2] for p in parts]), [n for p in parts for n in p[3]], skipped)
