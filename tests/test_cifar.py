"""CIFAR-10 / CIFAR-100 from the official pickle batches: layout, labels, bad files, download, training.

The files are written here byte for byte as the official ones were (Python 2 cPickle, protocol 2):
bytes keys and names as Python 2 str opcodes, b"data" a numpy.core ndarray, labels a list of ints.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from byol.base.errors import ConfigError, DataError
from byol.config import Data, load_config
from byol.data import build_dataset, build_training_dataset, dataset_labels
from byol.data import cifar as cifar_module
from byol.data.batches import read_rows
from byol.data.cifar import CIFAR10, CIFAR100, FILES, download_cifar
from byol.data.stl10 import resize_uint8

from testkit import TINY

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote CIFAR: bytes and str as Python 2 str (SHORT_BINSTRING /
    BINSTRING), numpy's globals under numpy.core (numpy 1), not Python 3's _codecs.encode calls."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes], dispatch[str] = save_bytes, save_str


def _dump(path, obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, 2).dump(obj)
    path.write_bytes(buf.getvalue())


def write_cifar(root, name: str = "cifar10", n: int = 3, seed: int = 0) -> dict:
    """A tiny CIFAR in the official layout under ROOT: every batch file holds `n` random images.
    Returns {file name: (data uint8 [n, 3072], labels int64 [n])} as written."""
    files, rng = FILES[name], np.random.default_rng(seed)
    folder = root / files.folder
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, batches in files.splits.items():
        for batch in batches:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, files.n_classes, n)
            content = {b"batch_label": f"{split} batch".encode(), b"data": data,
                       b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
            if name == "cifar10":
                content[b"labels"] = labels.tolist()
            else:
                content.update({b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist()})
            _dump(folder / batch, content)
            written[batch] = data, labels
    if name == "cifar10":
        meta = {b"num_cases_per_batch": n, b"label_names": [c.encode() for c in CIFAR10_NAMES], b"num_vis": 3072}
    else:
        meta = {b"fine_label_names": [f"fine_{k}".encode() for k in range(100)],
                b"coarse_label_names": [f"coarse_{k}".encode() for k in range(20)]}
    _dump(folder / files.meta, meta)
    return written


@pytest.fixture
def c10(tmp_path):
    return tmp_path, write_cifar(tmp_path, "cifar10")


# ---------------------------------------------------------------------------------------- reading
def test_cifar10_splits_labels_and_classes(c10):
    root, written = c10
    train, test = CIFAR10(root, "train"), CIFAR10(root, "test")
    assert len(train) == 5 * 3 and len(test) == 3
    expected = np.concatenate([written[f"data_batch_{k}"][1] for k in range(1, 6)])
    assert train.labels.dtype == np.int64 and np.array_equal(train.labels, expected)
    assert np.array_equal(test.labels, written["test_batch"][1])
    assert train.classes == CIFAR10_NAMES and train.name == "cifar10"
    x, y = train[4]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and isinstance(y, int) and y == expected[4]
    assert np.array_equal(x.numpy().reshape(-1), written["data_batch_2"][0][1])   # batch 2, image 1


def test_cifar10_pixel_layout_is_channel_then_row_major(c10):
    root, _ = c10
    c, r, k = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    image = ((c * 97 + r * 3 + k * 7) % 256).astype(np.uint8)   # [3, 32, 32], (row, col) asymmetric
    row = image.reshape(-1)                                     # 1024 R, 1024 G, 1024 B, rows in order
    labels = [3, 1, 4]
    _dump(root / "cifar-10-batches-py" / "test_batch",
          {b"data": np.stack([np.zeros(3072, np.uint8), row, np.zeros(3072, np.uint8)]), b"labels": labels})
    x, y = CIFAR10(root, "test")[1]
    assert torch.equal(x, torch.from_numpy(image)) and y == 1
    for ch, r_, k_ in [(0, 0, 1), (1, 5, 30), (2, 31, 3)]:   # the byte of (channel, row, column)
        assert x[ch, r_, k_] == row[ch * 1024 + r_ * 32 + k_]
    red_with_green_dot = np.zeros((3, 32, 32), np.uint8)
    red_with_green_dot[0] = 255
    red_with_green_dot[1, 2, 5] = 200                           # row 2, column 5
    _dump(root / "cifar-10-batches-py" / "test_batch",
          {b"data": red_with_green_dot.reshape(1, 3072), b"labels": [0]})
    x, _ = CIFAR10(root, "test")[0]
    assert (x[0] == 255).all() and (x[2] == 0).all() and x[1].nonzero().tolist() == [[2, 5]]


def test_cifar_resizes_only_when_asked(c10):
    root, written = c10
    _dump(root / "cifar-10-batches-py" / "test_batch",
          {b"data": np.full((2, 3072), 77, np.uint8), b"labels": [0, 9]})
    x, _ = CIFAR10(root, "test", image_size=16)[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and (x == 77).all()
    native = CIFAR10(root, "train")                             # 32 px: the stored bytes themselves
    first_two = native.images[:2]
    assert resize_uint8(first_two, 32) is first_two
    assert torch.equal(native.get_batch([0])[0][0].reshape(-1), torch.from_numpy(written["data_batch_1"][0][0]))


@pytest.mark.parametrize("size", [32, 20])
def test_cifar_get_batch_equals_getitem(c10, size):
    ds = CIFAR10(c10[0], "train", image_size=size)
    images, labels = ds.get_batch([5, 2, 14, 2, 0])             # any order, repeats allowed
    items = [ds[i] for i in (5, 2, 14, 2, 0)]
    assert images.shape == (5, 3, size, size) and labels.dtype == torch.int64
    assert torch.equal(images, torch.stack([x for x, _ in items])) and labels.tolist() == [y for _, y in items]
    for bad in (lambda: ds.get_batch([len(ds)]), lambda: ds[len(ds)], lambda: ds.get_batch([-1])):
        with pytest.raises(IndexError):
            bad()
    rows = read_rows(ds, 3, 9)                                  # extraction's reader takes get_batch
    assert torch.equal(rows.images, ds.get_batch(range(3, 9))[0])
    assert rows.labels.tolist() == ds.labels[3:9].tolist()


def test_cifar_max_images_keeps_the_first_and_reads_only_those_batches(c10):
    root, _ = c10
    full = CIFAR10(root, "train")
    (root / "cifar-10-batches-py" / "data_batch_5").write_bytes(b"not read")
    few = CIFAR10(root, "train", max_images=7)                  # batches 1-3 (3 + 3 + 1 images)
    assert len(few) == 7 and torch.equal(few.images, full.images[:7])
    assert np.array_equal(few.labels, full.labels[:7])


def test_cifar100_reads_fine_labels_and_names(tmp_path):
    written = write_cifar(tmp_path, "cifar100", n=5, seed=3)
    ds = CIFAR100(tmp_path, "train")
    assert len(ds) == 5 and np.array_equal(ds.labels, written["train"][1]) and ds.name == "cifar100"
    assert len(ds.classes) == 100 and ds.classes[7] == "fine_7"
    assert len(CIFAR100(tmp_path, "test")) == 5
    ds = build_dataset(Data(name="cifar100", root=str(tmp_path), split="test", download=False), 32)
    assert isinstance(ds, CIFAR100) and dataset_labels(ds).tolist() == written["test"][1].tolist()


@pytest.mark.parametrize("split", ["unlabeled", "validation", "train+test"])
def test_cifar_bad_split_lists_valid_ones(c10, split):
    with pytest.raises(DataError, match="valid splits: train, test"):
        CIFAR10(c10[0], split)


def test_the_default_training_split_reads_cifars_train(c10):
    # the schema's data.split default (STL-10's train+unlabeled): CIFAR has no unlabeled images
    whole = CIFAR10(c10[0], "train+unlabeled")
    assert whole.split == "train" and np.array_equal(whole.labels, CIFAR10(c10[0], "train").labels)


# ------------------------------------------------------------------------------------- bad files
def _bad_batches():
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}
    yield "truncated", None, "cannot be unpickled"
    yield "garbage", b"\x80\x02}q\x00(U\x04data" + b"\xff" * 40, "cannot be unpickled"
    yield "not a dict", [1, 2], "holds a list"
    yield "no labels", {b"data": good[b"data"]}, r"no b'labels' entry"
    yield "short rows", {**good, b"data": np.zeros((2, 3000), np.uint8)}, r"uint8 \[2, 3000\]"
    yield "float data", {**good, b"data": np.zeros((2, 3072), np.float32)}, "float32"
    yield "label count", {**good, b"labels": [1, 2, 3]}, "3 labels for 2 images"
    yield "label range", {**good, b"labels": [1, 10]}, r"outside 0\.\.9"
    yield "label type", {**good, b"labels": [1.5, 2.0]}, "not a list of integers"


@pytest.mark.parametrize("content, match", [case[1:] for case in _bad_batches()],
                         ids=[case[0] for case in _bad_batches()])
def test_cifar_bad_batch_file_is_named_with_what_to_do(c10, content, match):
    path = c10[0] / "cifar-10-batches-py" / "test_batch"
    if content is None:
        path.write_bytes(path.read_bytes()[:2000])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _dump(path, content)
    with pytest.raises(DataError, match=match) as err:
        CIFAR10(c10[0], "test")
    message = str(err.value)
    assert str(path) in message and "delete it" in message and "data.download=true" in message
    assert "\n" not in message


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("file", ["test_batch", "batches.meta"])
def test_cifar_pickle_naming_another_global_is_refused(c10, tmp_path, file):
    marker = tmp_path / "ran"
    path = c10[0] / "cifar-10-batches-py" / file
    path.write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [], b"label_names": _Evil(marker)},
                                  protocol=4))   # 2 would name _codecs.encode first (Python 3's bytes)
    with pytest.raises(DataError, match=r"system.*refused") as err:
        CIFAR10(c10[0], "test")
    assert not marker.exists() and str(path) in str(err.value)


# --------------------------------------------------------------------------------------- download
@pytest.mark.parametrize("cls, absent", [(CIFAR10, "data_batch_1"), (CIFAR100, "meta")])
def test_cifar_missing_files_say_what_to_do(tmp_path, cls, absent):
    if absent == "meta":                                        # every file but the class names
        write_cifar(tmp_path, cls.name, n=1)
        (tmp_path / FILES[cls.name].folder / absent).unlink()
    with pytest.raises(DataError) as err:
        cls(tmp_path, "train")
    message = str(err.value)
    assert str(tmp_path / FILES[cls.name].folder / absent) in message and "\n" not in message
    assert all(hint in message for hint in ("not found", "data.download=true", "data.root="))


def _archive(tmp_path, name="cifar10"):
    """A tiny official-layout archive and its MD5."""
    write_cifar(tmp_path / "source", name, n=2)
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "source" / FILES[name].folder, arcname=FILES[name].folder)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_cifar_download_from_file_url_then_repair(tmp_path, monkeypatch):
    archive, md5 = _archive(tmp_path)
    monkeypatch.setitem(FILES, "cifar10", dataclasses.replace(FILES["cifar10"], url=archive.as_uri(), md5=md5))
    monkeypatch.setattr(cifar_module, "download_cifar", lambda r, name: download_cifar(r, name, progress=False))
    root = tmp_path / "data"
    ds = CIFAR10(root, "train", download=True)
    assert len(ds) == 10 and (root / "cifar-10-python.tar.gz").is_file() and not list(root.glob(".*.tmp-*"))
    # What a corrupt file's error says works: delete it, download=true (the verified archive is reused).
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"junk")
    with pytest.raises(DataError, match="delete it"):
        CIFAR10(root, "test", download=True)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    archive.unlink()
    assert len(CIFAR10(root, "test", download=True)) == 2


def test_cifar_download_with_wrong_md5_is_removed(tmp_path):
    archive, md5 = _archive(tmp_path, "cifar100")
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        download_cifar(root, "cifar100", url=archive.as_uri(), md5="0" * 32, progress=False)
    message = str(err.value)
    assert archive.as_uri() in message and md5 in message and "0" * 32 in message
    assert list(root.iterdir()) == []
    assert download_cifar(root, "cifar100", url=archive.as_uri(), md5=md5, progress=False) \
        == root / "cifar-100-python"


# ------------------------------------------------------------------------------ config, training
def test_config_names_cifar_and_training_reads_native_32_px(c10):
    cfg = load_config(None, ["data.name=cifar10", f"data.root={c10[0]}", "data.split=train",
                             "data_transforms.input_shape=(16,16,3)"])
    assert build_training_dataset(cfg, seed=0).image_size == 32         # cropped on the device
    assert build_dataset(cfg.data, 16, "test")[0][0].shape == (3, 16, 16)
    assert load_config(None, ["data.name=cifar100"]).data.name == "cifar100"
    with pytest.raises(ConfigError, match="cifar10, cifar100"):
        load_config(None, ["data.name=cifar"])


def test_trains_two_steps_on_cifar10(tmp_path):
    from byol.pretrain.loop import train
    write_cifar(tmp_path / "data", "cifar10", n=7)                      # 35 train images: 2 steps of 16
    summary = train(load_config(None, TINY + [
        f"trainer.run_dir={tmp_path / 'run'}", "data.name=cifar10", f"data.root={tmp_path / 'data'}",
        "data.download=false", "data.max_images=0", "trainer.max_steps=2", "trainer.knn_every=1",
        "data_transforms.input_shape=(16,16,3)"]))                      # views cropped from the 32 px images
    assert summary["steps"] == 2 and summary["knn_top1"] >= 0 and (tmp_path / "run" / "encoder.pt").is_file()
