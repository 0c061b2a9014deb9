"""CIFAR-10 and CIFAR-100 read from the official "python version" pickle batches, held in memory.

Layout: ROOT/cifar-10-batches-py/{data_batch_1 .. data_batch_5, test_batch, batches.meta} and
ROOT/cifar-100-python/{train, test, meta}. Each batch is a Python 2 pickle (protocol 2) of a dict
with bytes keys: b"data", a uint8 ndarray [N, 3072] whose rows are 32x32 images channel-major and
then row-major (1024 R, 1024 G, 1024 B bytes), so a row reshapes to [3, 32, 32] as it is; and
b"labels" (CIFAR-10, 0..9) or b"fine_labels" (CIFAR-100, 0..99), a list of N ints. The meta file
names the classes (b"label_names" / b"fine_label_names").

All of CIFAR is 184 MB as uint8 (60,000 x 3,072 bytes), so a split is read once into memory:
DataLoader workers fork and share its pages, and get_batch is an index into one tensor.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from byol.base.errors import DataError
from byol.data.download import download_archive, download_once
from byol.data.stl10 import resize_uint8

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:   # numpy < 2 has no numpy._core
    from numpy.core.multiarray import _reconstruct

SIDE = 32
RECORD = 3 * SIDE * SIDE   # bytes of one image: a row of b"data"


@dataclass(frozen=True)
class Files:
    """One CIFAR's official files: where they lie, which keys hold what, and its archive."""
    title: str
    folder: str                          # the archive's folder, under ROOT
    splits: dict[str, tuple[str, ...]]   # split -> its batch files, in order
    meta: str                            # the file naming the classes
    label_key: bytes
    names_key: bytes
    n_classes: int
    url: str                             # torchvision's constants
    md5: str
    archive: str


FILES = {
    "cifar10": Files("CIFAR-10", "cifar-10-batches-py",
                     {"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)},
                     "batches.meta", b"labels", b"label_names", 10,
                     "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                     "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz"),
    "cifar100": Files("CIFAR-100", "cifar-100-python", {"train": ("train",), "test": ("test",)},
                      "meta", b"fine_labels", b"fine_label_names", 100,
                      "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                      "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz"),
}

# A pickle runs whatever its globals name (os.system, builtins.eval ...), so a downloaded file may
# name only what an ndarray needs: numpy pickles one as _reconstruct(ndarray, (0,), b"b") followed
# by __setstate__ with the shape, a dtype(...) and the raw bytes. These three build arrays from
# plain values and run nothing else; numpy 1 (the official files) names numpy.core, numpy 2
# numpy._core. Everything else in the files is plain dicts, lists, bytes and ints.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class _Unpickler(pickle.Unpickler):
    """Refuses every global outside _ALLOWED."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR file does "
                                         f"(refused: a pickle runs what it refers to)") from None


def _corrupt(files: Files, path: Path, why: str) -> DataError:
    why = " ".join(why.split())   # one line, whatever an exception's message held
    return DataError(f"{files.title} file '{path}' is not a valid batch file: {why}; delete it and set "
                     f"data.download=true to fetch it again")


def _load(path: Path, files: Files) -> dict:
    """A CIFAR pickle -> its dict (bytes keys: encoding="bytes" keeps Python 2's str as bytes)."""
    try:
        with open(path, "rb") as f:
            obj = _Unpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"could not read {files.title} file '{path}': {e}") from None
    except Exception as e:   # a truncated or garbled pickle fails with any of a dozen types
        raise _corrupt(files, path, f"cannot be unpickled ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise _corrupt(files, path, f"it holds a {type(obj).__name__}, not a dict")
    return obj


def _entry(batch: dict, key: bytes, files: Files, path: Path):
    """batch[key]; a file re-pickled by Python 3 may have str keys, taken as well."""
    value = batch.get(key, batch.get(key.decode()))
    if value is None:
        keys = ", ".join(sorted(repr(k) for k in batch)[:8])
        raise _corrupt(files, path, f"it has no {key!r} entry (its keys: {keys})")
    return value


def _read_batch(path: Path, files: Files) -> tuple[np.ndarray, np.ndarray]:
    """A batch file -> (uint8 [N, 3, 32, 32], int64 [N] labels 0..C-1), checked."""
    batch = _load(path, files)
    data, labels = _entry(batch, b"data", files, path), _entry(batch, files.label_key, files, path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == RECORD):
        what = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _corrupt(files, path, f"its data is {what}, not uint8 [N, {RECORD}] (N 32x32 RGB images)")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(files, path, f"its {files.label_key!r} is not a list of integers")
    if len(labels) != len(data):
        raise _corrupt(files, path, f"it holds {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= files.n_classes):
        raise _corrupt(files, path, f"its labels go outside 0..{files.n_classes - 1}")
    return data.reshape(-1, 3, SIDE, SIDE), labels.astype(np.int64)


def _read_classes(path: Path, files: Files) -> list[str]:
    """The meta file -> the C class names, in label order."""
    names = _entry(_load(path, files), files.names_key, files, path)
    if not (isinstance(names, list) and len(names) == files.n_classes
            and all(isinstance(n, (bytes, str)) for n in names)):
        raise _corrupt(files, path, f"its {files.names_key!r} is not a list of {files.n_classes} names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def _missing(folder: Path, names) -> list[Path]:
    return [folder / n for n in names if not (folder / n).is_file()]


class CIFAR(Dataset):
    """A CIFAR split -> (uint8 [3, S, S], label 0..C-1); the CIFAR10 and CIFAR100 below."""

    name = ""   # a key of FILES

    def __init__(self, root, split: str = "train", image_size: int = SIDE, download: bool = False,
                 max_images: int = 0):
        files = FILES[self.name]
        # The schema's default training split (STL-10's train+unlabeled) reads a folder's train/ plus an
        # unlabeled/ if there is one; CIFAR has no unlabeled images, so it means train here too.
        split = "train" if split == "train+unlabeled" else split
        self.root, self.split, self.image_size = Path(root), split, image_size
        if split not in files.splits:
            raise DataError(f"unknown {files.title} split {split!r}; valid splits: {', '.join(files.splits)} "
                            f"(train+unlabeled reads train: CIFAR has no unlabeled images)")
        folder = self.root / files.folder
        needed = [*files.splits[split], files.meta]
        if _missing(folder, needed) and download:
            _download_once(self.root, self.name)
        if missing := _missing(folder, needed):
            raise DataError(f"{files.title} file '{missing[0]}' not found; set data.download=true to fetch "
                            f"it, or data.root=... to point at {files.folder}/'s parent")
        self.classes = _read_classes(folder / files.meta, files)
        images, labels, count = [], [], 0
        for batch in files.splits[split]:   # with max_images, only the batches it reaches are read
            want = max_images - count if max_images > 0 else None
            if want == 0:
                break
            x, y = _read_batch(folder / batch, files)
            images.append(x[:want])
            labels.append(y[:want])
            count += len(labels[-1])
        self.images = torch.from_numpy(np.concatenate(images))   # uint8 [N, 3, 32, 32]
        self.labels = np.concatenate(labels)                     # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {self.name} {self.split} ({len(self)} images)")
        return resize_uint8(self.images[i:i + 1], self.image_size)[0], int(self.labels[i])

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """indices [N] -> (uint8 [N, 3, S, S], int64 [N]), in the order given."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {self.name} {self.split} ({len(self)} images)")
        images = self.images[torch.from_numpy(idx)]
        return resize_uint8(images, self.image_size), torch.from_numpy(self.labels[idx])


class CIFAR10(CIFAR):
    name = "cifar10"


class CIFAR100(CIFAR):
    """Labelled with the 100 fine classes (the 20 coarse superclasses are not read)."""
    name = "cifar100"


CIFARS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def _download_once(root: Path, name: str) -> None:
    """Download under a file lock, so that several ranks starting together fetch it once."""
    files = FILES[name]
    every = [f for part in files.splits.values() for f in part] + [files.meta]
    download_once(root, name, lambda: not _missing(root / files.folder, every),
                  lambda: download_cifar(root, name))


def download_cifar(root, name: str = "cifar10", url: str | None = None, md5: str | None = None,
                   progress: bool = True) -> Path:
    """Fetch CIFAR-10 or CIFAR-100's official archive to ROOT, check its MD5, extract its folder
    (cifar-10-batches-py/, cifar-100-python/) into ROOT; return that folder."""
    files = FILES[name]
    return download_archive(root, url or files.url, md5 or files.md5, files.archive, progress) / files.folder
