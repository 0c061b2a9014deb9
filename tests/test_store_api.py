"""The store package beyond plain rows: extra per-row datasets, read_block, chunk sizes, the keys that
define a feature space, resuming a split, and all of it without importing torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from byol.base.errors import StoreError
from byol.store import (FEATURE_ATTRS, FEATURE_SETTINGS, MAX_CHUNK_BYTES, FeatureStore, ShardWriter,
                        check_compatible, chunk_rows, shard_name, write_manifest)
from byol.store.resume import keep_finished_shards, prepare_split_dir, shard_count, shard_rows

ROOT = Path(__file__).resolve().parents[1]


def small_store(split_dir, sizes, dim=3, settings=None, paths=True):
    """Shards of the given sizes, row r = [r, r, ...] with label r % 5, index 10 r and path 'p<r>'."""
    entries, start = [], 0
    for k, rows in enumerate(sizes):
        r = np.arange(start, start + rows)
        with ShardWriter(split_dir, k, dim, with_paths=paths, settings=settings) as w:
            w.append(np.repeat(r[:, None], dim, 1), r % 5, 10 * r, [f"p{i}" for i in r] if paths else None)
        entries.append(w.entry)
        start += rows
    write_manifest(split_dir, entries, dim, "float32", settings or {}, {})
    return FeatureStore.open(split_dir)


def test_extra_datasets_are_row_aligned_typed_and_chunked(tmp_path):
    extra = {"probs": (3, np.float32), "pred": (None, np.int64), "wide": (2048, np.float32)}
    with ShardWriter(tmp_path, 0, dim=4, attrs={"classes": [2, 5, 7]}, extra=extra) as w:
        for a in (0, 5):
            w.append(np.ones((5, 4)), np.arange(a, a + 5), np.arange(a, a + 5),
                     extra={"probs": np.full((5, 3), 0.5, np.float64), "pred": np.arange(a, a + 5),
                            "wide": np.zeros((5, 2048))})
        with pytest.raises(ValueError, match=r"exactly the declared datasets"):
            w.append(np.ones((1, 4)), [0], [0], extra={"probs": np.zeros((1, 3))})
        with pytest.raises(ValueError, match=r"'probs' must have shape \[1, 3\]"):
            w.append(np.ones((1, 4)), [0], [0],
                     extra={"probs": np.zeros((1, 4)), "pred": [0], "wide": np.zeros((1, 2048))})
        with pytest.raises(ValueError, match="exactly the declared"):
            w.append(np.ones((1, 4)), [0], [0])
    write_manifest(tmp_path, [w.entry], 4, "float32", {}, {})
    with h5py.File(w.path) as f:
        assert f["probs"].shape == (10, 3) and f["probs"].dtype == np.float32 and f["probs"][0, 0] == 0.5
        assert f["pred"].shape == (10,) and f["pred"].dtype == np.int64 and f["pred"][:].tolist() == list(range(10))
        assert f["probs"].chunks == (1024, 3) and f["pred"].chunks == (1024,)
        assert f["wide"].chunks == (512, 2048)                # 4 MB a chunk at most, as the embeddings
        assert json.loads(f.attrs["classes"]) == [2, 5, 7]
    assert FeatureStore.open(tmp_path, verify=True).labels().tolist() == list(range(10))  # extras ignored
    with pytest.raises(ValueError, match="'labels' would replace a standard field"):
        ShardWriter(tmp_path, 1, dim=4, extra={"labels": (None, np.int64)})


def test_chunk_rows_caps_rows_and_bytes():
    assert MAX_CHUNK_BYTES == 4 * 2**20
    assert chunk_rows(512 * 4) == 1024 and chunk_rows(4096 * 4) == 256 and chunk_rows(4096 * 2) == 512
    assert chunk_rows(8, limit=4) == 4 and chunk_rows(10 * MAX_CHUNK_BYTES) == 1 and chunk_rows(0) == 1024


def test_read_block_reads_any_rows_of_a_shard(tmp_path):
    store = small_store(tmp_path, [6, 9])
    block = store.read_block(1, 2, 7, fields=("embeddings", "indices", "paths"))
    assert block["embeddings"].dtype == np.float32 and block["embeddings"][:, 0].tolist() == [8, 9, 10, 11, 12]
    assert block["indices"].tolist() == [80, 90, 100, 110, 120] and list(block["paths"]) == ["p8", "p9", "p10",
                                                                                            "p11", "p12"]
    assert len(store.read_block(0, 3, 3)["labels"]) == 0
    with pytest.raises(IndexError, match="no shard number 2"):
        store.read_block(2, 0, 1)
    with pytest.raises(IndexError, match=r"rows \[4, 10\) are outside shard 1"):
        store.read_block(1, 4, 10)
    with pytest.raises(ValueError, match="unknown field 'pixels'"):
        store.read_block(0, 0, 1, fields=("pixels",))
    with pytest.raises(StoreError, match="no paths"):
        small_store(tmp_path / "bare", [2], paths=False).read_block(0, 0, 1, fields=("paths",))


def test_feature_settings_are_compared_when_both_record_them(tmp_path):
    assert set(FEATURE_ATTRS) < set(FEATURE_SETTINGS)
    a = small_store(tmp_path / "a", [2], settings={"layer": "pool", "augment": False})
    b = small_store(tmp_path / "b", [2], settings={"layer": "pool", "augment": True, "split": "test"})
    c = small_store(tmp_path / "c", [2], settings={"split": "test"})
    check_compatible(a, b)                                   # settings are not compared by default
    check_compatible(a, c, ("dim", "encoder", "feature-settings"))
    with pytest.raises(StoreError, match=r"settings\.augment False vs True"):
        check_compatible(a, b, ("dim", "encoder", "feature-settings"))


def test_encoder_provenance_records_the_feature_space_keys():
    from byol.encoders.source import load_source
    encoder, cfg = load_source("pixels")
    attrs, settings = encoder.provenance(cfg, "float16", 7)
    assert set(FEATURE_ATTRS) <= set(attrs) and attrs["normalisation"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    assert set(FEATURE_SETTINGS) - set(settings) == {"normalisation", "augment"}
    assert (settings["dtype"], settings["rows_per_shard"], settings["precision"]) == ("float16", 7, "fp32")
    assert attrs["config"]["data"]["name"] == cfg.data.name and attrs["encoder"] == settings["encoder"] == "pixels"


def test_resume_keeps_finished_shards_and_refuses_other_settings(tmp_path):
    assert shard_count(25, 10) == 3 and shard_count(0, 10) == 0
    assert [shard_rows(k, 25, 10) for k in range(3)] == [(0, 10), (10, 20), (20, 25)]
    settings = {"rows_per_shard": 10, "dtype": "float32"}
    entries = []
    for k in range(3):
        start, stop = shard_rows(k, 25, 10)
        rows = np.arange(start, stop)
        with ShardWriter(tmp_path, k, dim=2, settings=settings) as w:
            w.append(np.zeros((len(rows), 2)), rows, rows if k != 1 else rows + 1)   # shard 1: wrong indices
        entries.append(w.entry)
    write_manifest(tmp_path, entries, 2, "float32", settings, {})
    (tmp_path / ".shard-00003.h5.tmp-99").write_bytes(b"half")
    with pytest.raises(StoreError, match=r"other settings \(dtype: 'float32' there, 'float16' now\).*--overwrite"):
        prepare_split_dir(tmp_path, dict(settings, dtype="float16"), 3, overwrite=False)
    known = prepare_split_dir(tmp_path, settings, 3, overwrite=False)
    assert known == {e["name"]: e["sha256"] for e in entries}
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / ".shard-00003.h5.tmp-99").exists()
    kept, todo = keep_finished_shards(tmp_path, [0, 1, 2], 25, 10, 2, "float32", known)
    assert sorted(kept) == [0, 2] and todo == [1] and kept[2] == entries[2]
    assert not (tmp_path / shard_name(1)).exists()            # the bad shard is deleted, to be written again
    assert keep_finished_shards(tmp_path, [2], 25, 10, 2, "float16", known) == ({}, [2])   # other dtype
    prepare_split_dir(tmp_path, {"other": 1}, 3, overwrite=True)
    assert os.listdir(tmp_path) == []


def test_store_writes_reads_and_resumes_without_importing_torch(tmp_path):
    script = f"""
import sys
import numpy as np
from byol.store import FeatureStore, ShardWriter, check_compatible, write_manifest
from byol.store.resume import keep_finished_shards, prepare_split_dir
d = {str(tmp_path)!r}
with ShardWriter(d, 0, dim=3, with_paths=True, attrs={{"encoder": "x"}}, settings={{"a": 1}},
                 extra={{"pred": (None, np.int64)}}) as w:
    w.append(np.ones((4, 3)), [0, 1, 2, 3], np.arange(4), list("abcd"), extra={{"pred": np.arange(4)}})
write_manifest(d, [w.entry], 3, "float32", {{"a": 1}}, {{"encoder": "x"}})
store = FeatureStore.open(d, verify=True)
check_compatible(store, store, ("dim", "encoder", "feature-settings"))
block = store.read_block(0, 1, 3, ("labels", "paths"))
rows = sum(len(b["embeddings"]) for b in store.iter_blocks(3))
known = prepare_split_dir(d, {{"a": 1}}, 1, overwrite=False)
kept, todo = keep_finished_shards(d, [0], 4, 4, 3, "float32", known)
print(block["labels"].tolist(), list(block["paths"]), rows, sorted(kept), todo, "torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "[1, 2] ['b', 'c'] 4 [0] [] False"
