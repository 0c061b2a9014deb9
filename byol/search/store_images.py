"""What a store row is, for people: its image file (or dataset item number) and a thumbnail of it.

A store records each row's dataset item (`indices`) and, for image folders and `byol latent` inputs,
its path. Where the row came from decides how to name and show it:

  byol latent store     paths are the files as given: named and decoded as they are
                        (`split:NAME/...` rows and files gone since are shown grey)
  image-folder store    paths relative to the folder of the store's saved config and split: joined
                        to it, so that they open from anywhere, and decoded from there
  STL-10/CIFAR/digits   named by dataset item number (`indices[row]`), shown by the dataset reader
                        of the store's saved config (byol.data.build_dataset)
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from byol.base.errors import ConfigError, DataError

log = logging.getLogger("byol")

LATENT_DATASET = "latent-inputs"      # attrs["dataset"] of a store written by byol latent
GREY = 128


class StoreImages:
    """Names and thumbnails of `store`'s rows; what they need (an image folder's location, a dataset
    reader) is found once, when first needed."""

    def __init__(self, store, size: int = 64):
        self.store, self.size = store, size
        self.from_files = store.attrs.get("dataset") == LATENT_DATASET
        self._source, self._tried = None, False

    def source(self):
        """Where the rows' images are: a folder (Path) that a folder store's paths start from, a
        dataset reader at thumbnail size, or None (with one warning) where they cannot be read here."""
        if not self._tried and not self.from_files:
            self._tried = True
            if not self.store.attrs.get("config"):      # not written by byol: nothing says where its images are
                return None
            from byol.config import load_config
            from byol.data import build_dataset
            from byol.data.image_folder import split_folders
            try:
                cfg = load_config(None, ["data.download=false"], base=self.store.attrs.get("config") or {})
                split = self.store.attrs.get("split") or cfg.data.split
                self._source = (split_folders(Path(cfg.data.root), split)[0] if self.store.has_paths else
                                build_dataset(cfg.data, self.size, split))   # a folder's reader checks every file
            except (ConfigError, DataError, OSError) as e:
                log.warning("%s: its images cannot be read here (%s): thumbnails are grey, paths as stored",
                            self.store.split_dir, str(e).splitlines()[0])
        return self._source

    def names(self, rows) -> list[dict]:
        """Per row of `rows`: {"path": openable path} where the store has paths, else {"item": dataset
        item number}. Reads only those rows' fields (a store of any size)."""
        rows = np.asarray(rows, np.int64)
        if not self.store.has_paths:
            return [{"item": int(i)} for i in self.store.take(rows, "indices")]
        return [{"path": path} for path in self._paths(rows)]

    def class_names(self, rows) -> list[str]:
        """Per row: its class name where the store has labels and class names, else ""."""
        classes = list(self.store.attrs.get("classes") or [])
        if not classes:
            return [""] * len(rows)
        labels = self.store.take(np.asarray(rows, np.int64), "labels").tolist()
        return [str(classes[y]) if 0 <= y < len(classes) else "" for y in labels]

    def _paths(self, rows: np.ndarray) -> list[str]:
        source = self.source()
        folder = source if isinstance(source, Path) else None
        return [str(folder / p) if folder is not None and not Path(p).is_absolute() else str(p)
                for p in self.store.take(rows, "paths")]

    def thumbnails(self, rows) -> np.ndarray:
        """uint8 [n, 3, size, size] images of store rows `rows` (grey where unreadable)."""
        rows = np.asarray(rows, np.int64)
        out = np.full((len(rows), 3, self.size, self.size), GREY, np.uint8)
        if self.store.has_paths:
            for i, path in enumerate(self._paths(rows)):
                out[i] = decode_or_none(path, self.size)
        elif self.source() is not None:
            for i, item in enumerate(self.store.take(rows, "indices")):
                out[i] = np.asarray(self.source()[int(item)][0])
        return out


def decode_or_none(path: str, size: int) -> np.ndarray | int:
    """An image file as uint8 [3, size, size], decoded as extraction decodes it, or GREY if it cannot be."""
    from byol.data.image_folder import decode_image
    try:
        return np.transpose(decode_image(Path(path), size), (2, 0, 1))
    except Exception:               # Pillow raises many kinds; a thumbnail is not worth failing for
        return GREY
