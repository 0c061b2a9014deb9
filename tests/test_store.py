"""HDF5 feature store: atomic shard writes, manifest, block reads, corruption detection."""
import hashlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from byol.base.atomic import file_sha256
from byol.base.errors import StoreError
from byol.store import FeatureStore, check_compatible, shard_name
from byol.store.writer import ShardWriter, write_manifest

from testkit import write_store

ATTRS = {"encoder": "resnet18", "checkpoint_sha256": "ab" * 32, "step": 1200, "image_size": 96,
         "config": {"model": {"network": "resnet18", "hidden": [512, 128]}, "lr": 0.2},
         "normalisation": [[0.4, 0.4, 0.4], [0.2, 0.2, 0.2]], "note": None}
SETTINGS = {"layer": "pool", "image_size": 96, "augment": False}


def random_store(split_dir, shard_rows, dim=6, dtype="float32", with_paths=True, attrs=ATTRS,
                 settings=SETTINGS, seed=0):
    """Random rows in shards of the given sizes (several appends each, small chunks) + manifest,
    written by tests/testkit.py's write_store; returns the columns a reader must give back."""
    rng = np.random.default_rng(seed)
    emb, labels, indices, paths = [], [], [], []
    start = 0
    for rows in shard_rows:
        emb.append(rng.standard_normal((rows, dim)).astype(np.float32))
        labels.append(rng.integers(-1, 10, rows))
        indices.append(np.arange(start, start + rows) * 3)  # not just 0..N-1: must come back exactly
        paths.extend(f"imgs/ü-{j}.png" for j in indices[-1])
        start += rows
    emb, labels, indices = np.concatenate(emb), np.concatenate(labels).astype(np.int64), np.concatenate(indices)
    write_store(split_dir, emb, labels, list(shard_rows), indices=indices, paths=paths if with_paths else None,
                dtype=dtype, attrs=attrs, settings=settings, chunk_rows=4, append_rows=5)
    return {"embeddings": emb.astype(dtype).astype(np.float32), "labels": labels, "indices": indices,
            "paths": paths if with_paths else None}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_several_shards(tmp_path, dtype):
    expected = random_store(tmp_path, [11, 5, 9], dtype=dtype)
    store = FeatureStore.open(tmp_path, verify=True)
    assert (len(store), store.dim, store.dtype) == (25, 6, dtype)
    assert np.array_equal(store.to_array(), expected["embeddings"])
    assert store.to_array().dtype == np.float32
    assert np.array_equal(store.labels(), expected["labels"]) and store.labels().dtype == np.int64
    assert np.array_equal(store.indices(), expected["indices"])
    assert store.paths() == expected["paths"]
    assert store.attrs == ATTRS and store.settings == SETTINGS
    assert next(store.iter_blocks(4))["embeddings"].dtype == np.float32
    raw = np.concatenate([b["embeddings"] for b in store.iter_blocks(7, fields=("embeddings",), raw=True)])
    assert raw.dtype == np.dtype(dtype)
    # The shard itself carries the provenance: nested values as JSON, scalars as-is.
    with h5py.File(tmp_path / shard_name(1)) as f:
        assert json.loads(f.attrs["config"]) == ATTRS["config"]
        assert json.loads(f.attrs["normalisation"]) == ATTRS["normalisation"]
        assert f.attrs["step"] == 1200 and f.attrs["encoder"] == "resnet18"
        assert json.loads(f.attrs["note"]) is None
        assert json.loads(f.attrs["settings_json"]) == SETTINGS
        assert f["embeddings"].fletcher32 and f["embeddings"].maxshape == (None, 6)


def test_user_reads_a_shard_with_plain_h5py(tmp_path):
    expected = random_store(tmp_path, [4, 3])
    with h5py.File(tmp_path / "shard-00001.h5") as f:  # no byol import needed to read a shard
        embeddings, labels = f["embeddings"][:], f["labels"][:]
        paths = f["paths"].asstr()[:].tolist()
    assert np.array_equal(embeddings, expected["embeddings"][4:])
    assert np.array_equal(labels, expected["labels"][4:]) and paths == expected["paths"][4:]


@pytest.mark.parametrize("block_rows", [1, 3, 5, 7, 10, 1000])
def test_iter_blocks_is_the_concatenation_in_order(tmp_path, block_rows):
    sizes = [10, 5, 0, 13]
    expected = random_store(tmp_path, sizes)
    blocks = list(FeatureStore.open(tmp_path).iter_blocks(block_rows, fields=("embeddings", "labels",
                                                                               "indices", "paths")))
    assert all(0 < len(b["labels"]) <= block_rows for b in blocks)
    for name in ("embeddings", "labels", "indices"):
        assert np.array_equal(np.concatenate([b[name] for b in blocks]), expected[name])
    assert [p for b in blocks for p in b["paths"]] == expected["paths"]
    # Blocks never straddle a shard: each shard contributes ceil(rows / block_rows) blocks.
    assert len(blocks) == sum(-(-n // block_rows) for n in sizes)


def test_to_array_refuses_over_the_limit(tmp_path):
    random_store(tmp_path, [10, 10], dim=6)
    store = FeatureStore.open(tmp_path)
    assert store.to_array(max_bytes=20 * 6 * 4).shape == (20, 6)
    with pytest.raises(StoreError, match="iter_blocks"):
        store.to_array(max_bytes=20 * 6 * 4 - 1)


def test_empty_store(tmp_path):
    random_store(tmp_path, [0], dim=5, with_paths=False)
    store = FeatureStore.open(tmp_path, verify=True)
    assert len(store) == 0 and list(store.iter_blocks()) == []
    assert store.to_array().shape == (0, 5) and store.labels().shape == (0,)
    assert store.paths() is None
    with pytest.raises(StoreError, match="no paths"):
        next(store.iter_blocks(fields=("paths",)))


def test_virtual_dataset_reads_as_the_concatenation(tmp_path):
    split = tmp_path / "train"
    expected = random_store(split, [7, 0, 4, 9], dtype="float16")
    virtual = FeatureStore.open(split).virtual_dataset()
    assert virtual == split / "virtual.h5"
    shutil.move(split, tmp_path / "moved")  # sources are relative: the split can move as a whole
    with h5py.File(tmp_path / "moved" / "virtual.h5") as f:
        assert f["embeddings"].dtype == np.float16
        assert np.array_equal(f["embeddings"][:].astype(np.float32), expected["embeddings"])
        assert np.array_equal(f["labels"][:], expected["labels"])
        assert np.array_equal(f["indices"][:], expected["indices"])
    # The virtual file is not a shard: the store still opens and verifies.
    store = FeatureStore.open(tmp_path / "moved", verify=True)
    elsewhere = store.virtual_dataset(tmp_path / "views" / "train.h5")
    with h5py.File(elsewhere) as f:
        assert np.array_equal(f["labels"][:], expected["labels"])


def test_manifest_and_sha256(tmp_path):
    random_store(tmp_path, [3, 8, 2])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == "byol-feature-store" and manifest["version"] == 1
    assert (manifest["dim"], manifest["dtype"], manifest["n_rows"]) == (6, "float32", 13)
    assert [s["name"] for s in manifest["shards"]] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    for shard in manifest["shards"]:
        data = (tmp_path / shard["name"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest() == file_sha256(tmp_path / shard["name"])
        with h5py.File(tmp_path / shard["name"]) as f:
            assert f["embeddings"].shape[0] == shard["rows"]
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "shard-00000.h5", "shard-00001.h5",
                                            "shard-00002.h5"]  # no temp files left


def test_manifest_shards_sorted_by_name(tmp_path):
    entries = []
    for i in (2, 0, 1):
        with ShardWriter(tmp_path, i, dim=2) as w:
            w.append(np.full((i + 1, 2), i), np.zeros(i + 1), np.arange(i + 1))
        entries.append(w.entry)
    write_manifest(tmp_path, entries, 2, "float32", {}, {})
    store = FeatureStore.open(tmp_path)
    assert [s["name"] for s in store.shards] == [shard_name(i) for i in range(3)]
    assert np.array_equal(store.to_array()[:, 0], [0, 1, 1, 2, 2, 2])


def flip_byte_in_embeddings(path):
    """Flip one byte inside the first embeddings chunk (data, not header: the file still opens)."""
    with h5py.File(path) as f:
        info = f["embeddings"].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 5)
        byte = fh.read(1)
        fh.seek(info.byte_offset + 5)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_flipped_byte_is_caught(tmp_path):
    random_store(tmp_path, [6, 6, 6])
    flip_byte_in_embeddings(tmp_path / "shard-00001.h5")
    with pytest.raises(StoreError, match="shard-00001.h5.*SHA-256"):
        FeatureStore.open(tmp_path, verify=True)
    store = FeatureStore.open(tmp_path)  # headers are intact
    with pytest.raises(StoreError, match="shard-00001.h5.*SHA-256"):
        store.verify()
    # Without verify, the fletcher32 checksum still stops the read of the damaged chunk.
    with pytest.raises(StoreError, match="shard-00001.h5.*checksum failure"):
        store.to_array()


def test_missing_manifest(tmp_path):
    with ShardWriter(tmp_path, 0, dim=2) as w:
        w.append(np.zeros((1, 2)), [0], [0])
    with pytest.raises(StoreError, match="rerun the extraction"):
        FeatureStore.open(tmp_path)


def test_deleted_shard_is_named(tmp_path):
    random_store(tmp_path, [3, 3, 3])
    (tmp_path / "shard-00002.h5").unlink()
    with pytest.raises(StoreError, match="shard-00002.h5.*missing"):
        FeatureStore.open(tmp_path)


def edit_manifest(path, edit):
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_manifest_rows_disagreeing_with_shard(tmp_path):
    random_store(tmp_path, [4, 5])

    def one_more_row(m):
        m["shards"][1]["rows"] += 1
        m["n_rows"] += 1

    edit_manifest(tmp_path / "manifest.json", one_more_row)
    with pytest.raises(StoreError, match="shard-00001.h5.*5 rows.*says 6"):
        FeatureStore.open(tmp_path)
    edit_manifest(tmp_path / "manifest.json", lambda m: m.update(n_rows=100))
    with pytest.raises(StoreError, match="n_rows 100"):
        FeatureStore.open(tmp_path)


def test_manifest_dim_or_settings_disagreeing_with_shard(tmp_path):
    random_store(tmp_path, [4])
    edit_manifest(tmp_path / "manifest.json", lambda m: m.update(dim=7))
    with pytest.raises(StoreError, match="shard-00000.h5.*dim 7"):
        FeatureStore.open(tmp_path)
    edit_manifest(tmp_path / "manifest.json", lambda m: m.update(dim=6, settings={"layer": "fc"}))
    with pytest.raises(StoreError, match="shard-00000.h5.*other settings"):
        FeatureStore.open(tmp_path)


def test_aborted_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, 3, dim=4, with_paths=True) as w:
            w.append(np.ones((2, 4)), [1, 2], [0, 1], ["a", "b"])
            assert w.tmp.exists() and not (tmp_path / "shard-00003.h5").exists()  # final name only on close
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_writer_rejects_bad_rows(tmp_path):
    with ShardWriter(tmp_path, 0, dim=4) as w:
        with pytest.raises(ValueError, match=r"\[n, 4\]"):
            w.append(np.ones((2, 3)), [1, 2], [0, 1])
        with pytest.raises(ValueError, match="labels"):
            w.append(np.ones((2, 4)), [1, 2, 3], [0, 1])
        with pytest.raises(ValueError, match="paths"):
            w.append(np.ones((2, 4)), [1, 2], [0, 1], ["a", "b"])
    assert w.entry["rows"] == 0


def test_chunks_are_capped_to_a_few_megabytes(tmp_path):
    with ShardWriter(tmp_path, 0, dim=4096, chunk_rows=1024) as w:
        pass
    with h5py.File(w.path) as f:
        rows = f["embeddings"].chunks[0]
        assert rows * 4096 * 4 <= 4 * 2**20 and rows == 256
        assert f["labels"].chunks == (256,)


def test_store_written_with_plain_h5py(tmp_path):
    """A user following the documented layout, without byol: h5py + json + hashlib."""
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((9, 3)).astype(np.float32)
    shards = []
    for i, (a, b) in enumerate([(0, 4), (4, 9)]):
        name = f"shard-{i:05d}.h5"
        with h5py.File(tmp_path / name, "w") as f:
            f["embeddings"] = emb[a:b]
            f["labels"] = np.arange(a, b, dtype=np.int64)
            f["indices"] = np.arange(a, b, dtype=np.int64)
        sha = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        shards.append({"name": name, "rows": b - a, "sha256": sha})
    manifest = {"format": "byol-feature-store", "version": 1, "dim": 3, "dtype": "float32", "n_rows": 9,
                "shards": shards, "settings": {}, "attrs": {"encoder": "mine"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    store = FeatureStore.open(tmp_path, verify=True)
    assert np.array_equal(store.to_array(), emb)
    assert np.array_equal(store.labels(), np.arange(9)) and store.paths() is None
    assert [len(b["embeddings"]) for b in store.iter_blocks(3)] == [3, 1, 3, 2]


def test_check_compatible(tmp_path):
    random_store(tmp_path / "train", [3])
    random_store(tmp_path / "test", [2], seed=1)
    random_store(tmp_path / "wide", [2], dim=8)
    random_store(tmp_path / "other", [2], attrs=dict(ATTRS, encoder="resnet50"))
    random_store(tmp_path / "bare", [2], attrs={})
    train, test, wide, other, bare = (FeatureStore.open(tmp_path / n)
                                      for n in ("train", "test", "wide", "other", "bare"))
    check_compatible(train, test)
    check_compatible(train, bare)  # provenance unknown on one side: only dim is compared
    with pytest.raises(StoreError, match=r"train.*wide.*dim 6 vs 8"):
        check_compatible(train, wide)
    with pytest.raises(StoreError, match=r"train.*other.*encoder 'resnet18' vs 'resnet50'"):
        check_compatible(train, other)
    check_compatible(train, other, what=("dim",))
    random_store(tmp_path / "retrained", [2], attrs=dict(ATTRS, checkpoint_sha256="cd" * 32))
    with pytest.raises(StoreError, match="checkpoint_sha256"):  # same network, other weights
        check_compatible(train, FeatureStore.open(tmp_path / "retrained"))
