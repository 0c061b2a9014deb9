"""Datasets: STL-10 binary reader and downloader, image folders, digits, the factory."""
from __future__ import annotations

import hashlib
import io
import logging
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from byol.base.errors import DataError
from byol.config import Data
from byol.data import stl10 as stl10_module
from byol.data import build_dataset, dataset_labels
from byol.data.digits import TEST_ROWS_FILE, Digits, load_digits_arrays
from byol.data.image_folder import ImageFolder
from byol.data.stl10 import RECORD, STL10, download_stl10

import warm_process
from testkit import REPO, write_stl10_binary


# ---------------------------------------------------------------------------------------- STL-10
@pytest.fixture
def stl_root(tmp_path):
    write_stl10_binary(tmp_path, n_train=12, n_test=6, n_unlabeled=9, seed=1)
    return tmp_path


def _raw(folder, name):
    return np.fromfile(folder / "stl10_binary" / name, np.uint8)


def test_stl10_pixels_keep_their_orientation(stl_root):
    c, r, k = np.meshgrid(np.arange(3), np.arange(96), np.arange(96), indexing="ij")
    image = ((c * 97 + r * 3 + k * 7) % 256).astype(np.uint8)   # CHW, (row, col) asymmetric
    stored = np.stack([image] * 12).transpose(0, 1, 3, 2)       # the files are column-major
    stored.tofile(stl_root / "stl10_binary" / "train_X.bin")
    x, _ = STL10(stl_root, "train")[5]
    assert x.dtype == torch.uint8 and x.shape == (3, 96, 96)
    assert torch.equal(x, torch.from_numpy(image))
    raw = _raw(stl_root, "train_X.bin")
    for ch, row, col in [(0, 0, 1), (1, 5, 90), (2, 95, 3)]:   # byte of (c, row, col) in record 5
        assert x[ch, row, col] == raw[5 * RECORD + ch * 9216 + col * 96 + row]


def test_stl10_labels_are_zero_based(stl_root):
    ds = STL10(stl_root, "test")
    expected = _raw(stl_root, "test_y.bin").astype(np.int64) - 1
    assert len(ds) == 6 and ds.labels.dtype == np.int64
    assert np.array_equal(ds.labels, expected) and expected.min() >= 0 and expected.max() <= 9
    assert [ds[i][1] for i in range(6)] == expected.tolist()
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10 and ds.name == "stl10"


def test_stl10_train_plus_unlabeled_is_train_then_unlabeled(stl_root):
    train, unlabeled = STL10(stl_root, "train"), STL10(stl_root, "unlabeled")
    both = STL10(stl_root, "train+unlabeled")
    assert len(both) == 12 + 9
    assert torch.equal(both[11][0], train[11][0]) and both[11][1] == train[11][1]
    assert torch.equal(both[12][0], unlabeled[0][0]) and both[12][1] == -1
    assert (both.labels[12:] == -1).all() and (both.labels[:12] >= 0).all()


def test_stl10_folds_index_train(stl_root):
    train = STL10(stl_root, "train")
    line = (stl_root / "stl10_binary" / "fold_indices.txt").read_text().splitlines()[3]
    idx = [int(t) for t in line.split()]
    fold = STL10(stl_root, "train-fold-3")
    assert len(fold) == len(idx)
    for j, i in enumerate(idx):
        assert torch.equal(fold[j][0], train[i][0]) and fold[j][1] == train[i][1]


@pytest.mark.parametrize("split", ["validation", "train-fold-x", "train-fold-"])
def test_stl10_bad_split_lists_valid_ones(stl_root, split):
    with pytest.raises(DataError, match="valid splits: train, test, unlabeled"):
        STL10(stl_root, split)


def test_stl10_fold_index_out_of_range(stl_root):
    (stl_root / "stl10_binary" / "fold_indices.txt").write_text("0 1 99\n" * 10)
    with pytest.raises(DataError, match="fold_indices.txt.*outside"):
        STL10(stl_root, "train-fold-0")


def test_stl10_resizes_only_when_asked(stl_root):
    np.full((12, 3, 96, 96), 77, np.uint8).tofile(stl_root / "stl10_binary" / "train_X.bin")
    x, _ = STL10(stl_root, "train", image_size=32)[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and (x == 77).all()


@pytest.mark.parametrize("size", [96, 40])
def test_stl10_get_batch_equals_getitem(stl_root, size):
    ds = STL10(stl_root, "train+unlabeled", image_size=size)
    indices = [5, 2, 3, 4, 20, 2, 0, 13, 12]
    images, labels = ds.get_batch(indices)
    assert images.shape == (9, 3, size, size) and labels.dtype == torch.int64
    for row, i in enumerate(indices):
        assert torch.equal(images[row], ds[i][0]) and labels[row] == ds[i][1]
    with pytest.raises(IndexError):
        ds.get_batch([len(ds)])


def test_stl10_max_images_keeps_the_first(stl_root):
    full, few = STL10(stl_root, "train"), STL10(stl_root, "train", max_images=4)
    assert len(few) == 4 and torch.equal(few[3][0], full[3][0])


def test_stl10_reads_in_forked_workers_and_pickles(stl_root):
    ds = STL10(stl_root, "train")
    first = ds[0][0]                      # opens the file in this process before the fork
    loader = DataLoader(ds, batch_size=4, num_workers=1)
    images = torch.cat([x for x, _ in loader])
    assert torch.equal(images[0], first) and torch.equal(images, ds.get_batch(range(12))[0])
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[7][0], ds[7][0])


def test_stl10_truncated_file_is_named(stl_root):
    path = stl_root / "stl10_binary" / "test_X.bin"
    with open(path, "ab") as f:
        f.write(b"\0" * 100)
    with pytest.raises(DataError, match=r"test_X\.bin.*truncated"):
        STL10(stl_root, "test")


def test_stl10_label_count_mismatch(stl_root):
    (stl_root / "stl10_binary" / "test_y.bin").write_bytes(b"\1\2")
    with pytest.raises(DataError, match=r"test_y\.bin.*2 labels.*6 images"):
        STL10(stl_root, "test")


def test_stl10_missing_dataset_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as err:
        STL10(tmp_path / "nowhere", "train")
    message = str(err.value)
    assert "train_X.bin" in message and "data.download=true" in message and "data.root=" in message
    assert "\n" not in message


def _archive(tmp_path):
    """A tiny stl10_binary.tar.gz like the official one, and its MD5."""
    source = tmp_path / "source"
    write_stl10_binary(source, n_train=4, n_test=3, n_unlabeled=2)
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "stl10_binary", arcname="stl10_binary")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_stl10_download_from_file_url(tmp_path, monkeypatch):
    archive, md5 = _archive(tmp_path)
    monkeypatch.setattr(stl10_module, "URL", archive.as_uri())
    monkeypatch.setattr(stl10_module, "MD5", md5)
    root = tmp_path / "data"
    monkeypatch.setattr(stl10_module, "download_stl10",
                        lambda r: download_stl10(r, progress=False))
    ds = STL10(root, "train", download=True)
    assert len(ds) == 4 and (root / "stl10_binary.tar.gz").is_file()
    assert not (root / "stl10_binary.tar.gz.part").exists() and not list(root.glob(".*.tmp-*"))   # no temp file
    # A verified archive is not fetched again: extraction works with the URL gone.
    (root / "stl10_binary" / "train_X.bin").unlink()
    archive.unlink()
    download_stl10(root, progress=False)
    assert len(STL10(root, "train")) == 4


def test_stl10_download_with_wrong_md5_is_removed(tmp_path):
    archive, md5 = _archive(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        download_stl10(root, url=archive.as_uri(), md5="0" * 32, progress=False)
    message = str(err.value)
    assert archive.as_uri() in message and md5 in message and "0" * 32 in message
    assert list(root.iterdir()) == []


def test_stl10_download_failure_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        download_stl10(tmp_path, url=(tmp_path / "absent.tar.gz").as_uri(), progress=False)


# ----------------------------------------------------------------------------------- image folder
def _save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _rgb(color, size=(20, 12)):
    return Image.new("RGB", size, color)


def test_folder_with_class_subfolders(tmp_path):
    _save(tmp_path / "dog" / "b.png", _rgb((0, 0, 255)))
    _save(tmp_path / "cat" / "a.PNG", _rgb((255, 0, 0)))
    _save(tmp_path / "dog" / "deep" / "c.jpeg", _rgb((0, 255, 0)))
    _save(tmp_path / "top.bmp", _rgb((9, 9, 9)))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path, "train", 8)
    assert ds.classes == ["cat", "dog"] and ds.name == "folder"
    assert [ds.relative_path(i) for i in range(len(ds))] == \
        ["cat/a.PNG", "dog/b.png", "dog/deep/c.jpeg", "top.bmp"]
    assert ds.labels.tolist() == [0, 1, 1, -1]
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8 and y == 0
    assert x[0].min() > 250 and x[1:].max() < 5


def test_folder_without_subfolders_is_unlabeled(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.png", _rgb((i, i, i)))
    ds = ImageFolder(tmp_path, "train+unlabeled", 8)
    assert ds.classes == [] and ds.labels.tolist() == [-1, -1, -1] and len(ds.paths) == 3


def test_folder_split_subfolders(tmp_path):
    _save(tmp_path / "train" / "a" / "1.png", _rgb((1, 1, 1)))
    _save(tmp_path / "test" / "a" / "2.png", _rgb((2, 2, 2)))
    _save(tmp_path / "test" / "b" / "3.png", _rgb((3, 3, 3)))
    test = ImageFolder(tmp_path, "test", 8)
    assert test.classes == ["a", "b"] and test.relative_path(1) == "b/3.png"
    assert len(ImageFolder(tmp_path, "train+unlabeled", 8)) == 1   # train/, not test/
    with pytest.raises(DataError, match="test/ subfolder"):
        ImageFolder(tmp_path, "unlabeled", 8)
    with pytest.raises(DataError, match="val"):
        ImageFolder(tmp_path, "val", 8)


def test_folder_empty_or_missing_is_named(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        ImageFolder(tmp_path, "train", 8)
    with pytest.raises(DataError, match="not found"):
        ImageFolder(tmp_path / "absent", "train", 8)


def test_folder_grayscale_and_transparency(tmp_path):
    _save(tmp_path / "a_grey.png", Image.new("L", (10, 10), 100))
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 10, 5))               # top half fully transparent black
    _save(tmp_path / "b_rgba.png", rgba)
    _save(tmp_path / "c_la.png", Image.new("LA", (10, 10), (0, 0)))
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.paste(1, (0, 5, 10, 10))                      # bottom half colour 1 (green)
    _save(tmp_path / "d_palette.png", palette, transparency=0)
    ds = ImageFolder(tmp_path, "train", 10)
    grey, rgba_x, la, pal = (ds[i][0] for i in range(4))
    assert (grey == 100).all()
    assert (rgba_x[:, :4] == 255).all() and (rgba_x[0, 6:] == 255).all() and (rgba_x[1:, 6:] == 0).all()
    assert (la == 255).all()
    assert (pal[:, :4] == 255).all() and (pal[1, 6:] == 200).all() and (pal[0, 6:] == 0).all()


def test_folder_cmyk_and_high_bit_depth(tmp_path):
    _save(tmp_path / "a_cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)
    _save(tmp_path / "b_white16.png", Image.fromarray(np.full((12, 12), 65535, np.uint16)))
    _save(tmp_path / "c_mid16.png", Image.fromarray(np.full((12, 12), 32896, np.uint16)))
    _save(tmp_path / "d_float.tif", Image.fromarray(np.full((12, 12), 0.5, np.float32)))
    ds = ImageFolder(tmp_path, "train", 8)
    cmyk, white, mid, flt = (ds[i][0] for i in range(4))
    assert cmyk[0].min() > 230 and cmyk[1:].max() < 25        # red
    assert (white == 255).all() and (mid == 128).all() and (flt == 128).all()


def test_folder_exif_rotation_and_centre_crop(tmp_path):
    photo = Image.new("RGB", (400, 200), (255, 0, 0))
    photo.paste((0, 0, 255), (200, 0, 400, 200))          # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6                                      # displayed rotated 90 degrees clockwise
    _save(tmp_path / "a_rotated.jpg", photo, exif=exif, quality=95)
    stripes = Image.new("RGB", (60, 20), (255, 0, 0))
    stripes.paste((0, 255, 0), (20, 0, 40, 20))
    stripes.paste((0, 0, 255), (40, 0, 60, 20))
    _save(tmp_path / "b_stripes.png", stripes)
    ds = ImageFolder(tmp_path, "train", 16)
    rotated, cropped = ds[0][0], ds[1][0]
    assert rotated[0, :6].min() > 200 and rotated[2, :6].max() < 60    # top red
    assert rotated[2, 10:].min() > 200 and rotated[0, 10:].max() < 60  # bottom blue
    middle = cropped[:, :, 1:-1]                          # edge columns blend with the neighbours
    assert (middle[1] == 255).all() and (middle[[0, 2]] == 0).all()   # only the middle stripe
    assert cropped[1].min() > 200


def test_folder_non_images_are_skipped_and_counted(tmp_path, caplog):
    _save(tmp_path / "good.png", _rgb((5, 5, 5)))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.JPG").write_text("hello, I am not a JPEG")
    with caplog.at_level(logging.WARNING, logger="byol"):
        ds = ImageFolder(tmp_path, "train", 8)
    assert len(ds) == 1 and sorted(p for p, _ in ds.skipped) == ["empty.jpg", "text.JPG"]
    assert "skipped 2 of 3" in caplog.text
    with pytest.raises(DataError, match="empty.jpg"):
        ImageFolder(tmp_path, "train", 8, on_bad_image="error")


def test_folder_decompression_bomb_is_a_bad_image(tmp_path, monkeypatch):
    _save(tmp_path / "big.png", _rgb((1, 2, 3), size=(40, 40)))
    _save(tmp_path / "small.png", _rgb((1, 2, 3), size=(4, 4)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    ds = ImageFolder(tmp_path, "train", 4)
    assert ds.relative_path(0) == "small.png" and "DecompressionBomb" in ds.skipped[0][1]


def _truncated_jpeg_folder(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    (tmp_path / "a_cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _save(tmp_path / "b_good.png", _rgb((0, 255, 0)))


def test_folder_truncated_jpeg_skipped(tmp_path, caplog):
    _truncated_jpeg_folder(tmp_path)
    ds = ImageFolder(tmp_path, "train", 8)
    assert len(ds) == 2                                   # the header is fine
    with caplog.at_level(logging.WARNING, logger="byol"):
        x, _ = ds[0]                                      # replaced by the next image
    assert (x[1] == 255).all() and ds.decode_failures == 1 and "a_cut.jpg" in caplog.text
    ds[0]
    assert ds.decode_failures == 1                        # remembered, not decoded again


def test_folder_truncated_jpeg_error_policy(tmp_path):
    _truncated_jpeg_folder(tmp_path)
    ds = ImageFolder(tmp_path, "train", 8, on_bad_image="error")
    with pytest.raises(DataError, match="a_cut.jpg"):
        ds[0]


def test_folder_max_images(tmp_path):
    for i in range(5):
        _save(tmp_path / f"{i}.png", _rgb((i, i, i)))
    ds = ImageFolder(tmp_path, "train", 8, max_images=2)
    assert [ds.relative_path(i) for i in range(len(ds))] == ["0.png", "1.png"]


# ------------------------------------------------------------------------------- digits, factory
def test_digits_split_is_stratified_and_deterministic():
    train, test, everything = Digits("train", 16), Digits("test", 16), Digits("all", 16)
    assert len(train) + len(test) == len(everything) == 1797 and 355 <= len(test) <= 365
    assert np.array_equal(Digits("test", 16).labels, test.labels)
    assert np.bincount(test.labels, minlength=10).min() >= 30     # every class ~20% of its images
    assert np.array_equal(Digits("unlabeled", 16).labels, train.labels)
    assert len(Digits("train+unlabeled", 16)) == len(train)
    x, y = test[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and isinstance(y, int)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert everything.images.max() == 255 and everything.images.min() == 0
    with pytest.raises(DataError, match="valid splits"):
        Digits("train-fold-0", 16)


def test_digits_are_scikit_learns_in_its_split_read_without_importing_it():
    """byol reads the digits file and the test split's rows itself (no scikit-learn import at start):
    the same arrays and the same split as load_digits() and train_test_split(..., random_state=0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    reference = load_digits()
    images, target = load_digits_arrays()
    assert images.dtype == reference.images.dtype and np.array_equal(images, reference.images)
    assert np.array_equal(target, reference.target)
    train, test = train_test_split(np.arange(1797), test_size=0.2, random_state=0, stratify=reference.target)
    assert np.array_equal(np.loadtxt(TEST_ROWS_FILE, dtype=np.int64), np.sort(test)), \
        f"scikit-learn's split moved: rewrite {TEST_ROWS_FILE} with the rows {np.sort(test).tolist()}"
    assert np.array_equal(Digits("train", 8).labels, reference.target[np.sort(train)])
    code = "import sys; from byol.data.digits import Digits; Digits('test', 8); print('sklearn' in sys.modules)"
    assert warm_process.run(["-c", code], cwd=REPO).stdout == "False\n"     # (its forkserver holds no sklearn)


def test_build_dataset_dispatch_and_max_images(tmp_path):
    digits = build_dataset(Data(name="digits", split="train"), 8, split="test")
    assert isinstance(digits, Digits) and digits.split == "test" and digits.images.shape[-1] == 8
    write_stl10_binary(tmp_path / "stl", n_train=6, n_test=3, n_unlabeled=4)
    stl = build_dataset(Data(name="stl10", root=str(tmp_path / "stl"), download=False), 32)
    assert isinstance(stl, STL10) and len(stl) == 10 and stl[0][0].shape == (3, 32, 32)
    for i in range(3):
        _save(tmp_path / "imgs" / "k" / f"{i}.png", _rgb((i, i, i)))
    folder = build_dataset(Data(name="folder", root=str(tmp_path / "imgs"), max_images=2), 8)
    assert isinstance(folder, ImageFolder) and len(folder) == 2
    assert len(build_dataset(Data(name="digits", max_images=5), 8)) == 5
    assert dataset_labels(stl).tolist() == stl.labels.tolist()
    assert dataset_labels(Subset(digits, [3, 1])).tolist() == digits.labels[[3, 1]].tolist()
    assert dataset_labels(folder).dtype == np.int64 and dataset_labels(folder).tolist() == [0, 0]
