"""Feature extraction into the HDF5 store: exact embeddings, resumable and deterministic shards,
settings checks, pixels, foreign checkpoints, image folders, torchrun, CLI errors (CPU, seconds)."""
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import byol.store.sink as shard_sink_module
from byol.base.atomic import file_sha256
from byol.base.errors import StoreError
from byol.data.augment import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from byol.data.digits import Digits
from byol.data.stl10 import STL10
from byol.encoders.build import build_encoder
from byol.extract.extract_command import extract, main
from byol.store import FeatureStore, shard_name

import warm_process
from testkit import REPO, write_stl10_binary

FAST = dict(rows_per_shard=40, batch_size=16, progress=False)   # 96 test digits -> 3 shards


@pytest.fixture
def run_dir(trained_run):
    """The shared tiny trained run (1 step, tests/conftest.py): checkpoints/last.pt and encoder.pt,
    digits at 32 px. Read only."""
    return trained_run


def encoder_of(run_dir):
    net = build_encoder("resnet18", small_stem=False)
    net.load_state_dict(torch.load(run_dir / "encoder.pt", weights_only=True))
    return net.eval()


def shard_hashes(split_dir):
    return {p.name: file_sha256(p) for p in sorted(Path(split_dir).glob("shard-*.h5"))}


def read_store(split_dir):
    store = FeatureStore.open(split_dir, verify=True)
    return store, store.to_array(), store.labels(), store.indices()


@pytest.mark.parametrize("checkpoint", ["encoder.pt", "checkpoints/last.pt"])
def test_embeddings_equal_a_direct_encoder_forward(run_dir, tmp_path, checkpoint):
    summary = extract(run_dir / checkpoint, "test", tmp_path, **FAST)
    assert summary["n_rows"] == 96 and summary["dim"] == 512 and summary["n_shards"] == 3
    assert summary["split_dir"] == str(tmp_path / "test") and summary["img_per_s"] > 0
    store, emb, labels, indices = read_store(tmp_path / "test")
    digits = Digits("test", 32, max_images=96)
    with torch.no_grad():
        expected = encoder_of(run_dir)(eval_transform(digits.images, 32)).numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-5, rtol=0)
    assert np.array_equal(labels, digits.labels) and np.array_equal(indices, np.arange(96))
    assert [s["rows"] for s in store.shards] == [40, 40, 16]
    attrs = store.attrs
    assert attrs["encoder"] == "resnet18" and attrs["layer"] == "avgpool" and attrs["image_size"] == 32
    assert attrs["step"] == 1 and attrs["checkpoint_sha256"] == file_sha256(run_dir / checkpoint)
    assert attrs["normalisation"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert attrs["config"]["data"]["split"] == "test" and attrs["checkpoint"].endswith(checkpoint)
    assert {"torch", "torchvision", "byol"} <= set(attrs["versions"])
    assert store.settings["split"] == "test" and store.settings["rows_per_shard"] == 40
    manifest = json.loads((tmp_path / "test" / "manifest.json").read_text())
    assert "created" in manifest
    with h5py.File(tmp_path / "test" / shard_name(0)) as f:   # provenance lives in each shard too
        assert json.loads(f.attrs["config"])["network"]["name"] == "resnet18"
        assert "created" not in f.attrs                        # shard bytes stay reproducible


def test_rerun_reuses_shards_and_is_byte_identical(run_dir, tmp_path):
    first = extract(run_dir / "encoder.pt", "test", tmp_path / "a", **FAST)
    hashes = shard_hashes(tmp_path / "a" / "test")
    again = extract(run_dir / "encoder.pt", "test", tmp_path / "a", **FAST)
    assert again["reused_shards"] == 3 and again["extracted_rows"] == 0 and first["extracted_rows"] == 96
    assert shard_hashes(tmp_path / "a" / "test") == hashes
    extract(run_dir / "encoder.pt", "test", tmp_path / "b", **FAST)     # a fresh run: same bytes
    assert shard_hashes(tmp_path / "b" / "test") == hashes
    FeatureStore.open(tmp_path / "a" / "test", verify=True)


def test_interrupted_extraction_resumes_to_the_same_store(run_dir, tmp_path, monkeypatch):
    extract(run_dir / "encoder.pt", "test", tmp_path / "whole", **FAST)
    reference = shard_hashes(tmp_path / "whole" / "test")

    class DiesAtThirdShard(shard_sink_module.ShardWriter):    # the process "dies" while closing shard 2
        def close(self):
            if self.name == shard_name(2):
                raise KeyboardInterrupt("killed")
            return super().close()
    monkeypatch.setattr(shard_sink_module, "ShardWriter", DiesAtThirdShard)
    with pytest.raises(KeyboardInterrupt):
        extract(run_dir / "encoder.pt", "test", tmp_path / "cut", **FAST)
    monkeypatch.undo()
    split = tmp_path / "cut" / "test"
    assert sorted(os.listdir(split)) == [".lock", shard_name(0), shard_name(1)]    # no manifest, no temp file
    resumed = extract(run_dir / "encoder.pt", "test", tmp_path / "cut", **FAST)
    assert resumed["reused_shards"] == 2 and resumed["extracted_rows"] == 16
    assert shard_hashes(split) == reference

    # Killed later: the manifest and one shard gone, another shard damaged.
    (split / "manifest.json").unlink()
    (split / shard_name(1)).unlink()
    resumed = extract(run_dir / "encoder.pt", "test", tmp_path / "cut", **FAST)
    assert resumed["reused_shards"] == 2 and shard_hashes(split) == reference
    FeatureStore.open(split, verify=True)


def test_store_with_other_settings_is_refused_unless_overwrite(run_dir, tmp_path):
    extract(run_dir / "encoder.pt", "test", tmp_path, **FAST)
    with pytest.raises(StoreError, match=r"other settings.*dtype.*--overwrite"):
        extract(run_dir / "encoder.pt", "test", tmp_path, **{**FAST, "dtype": "float16"})
    (tmp_path / "test" / "manifest.json").unlink()              # shards alone are checked too
    with pytest.raises(StoreError, match=r"other settings.*rows_per_shard: 40 there, 50 now"):
        extract(run_dir / "encoder.pt", "test", tmp_path, **{**FAST, "rows_per_shard": 50})
    summary = extract(run_dir / "encoder.pt", "test", tmp_path, overwrite=True, **{**FAST, "dtype": "float16"})
    store, emb, _, _ = read_store(tmp_path / "test")
    assert store.dtype == "float16" and summary["reused_shards"] == 0 and emb.shape == (96, 512)
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == \
        [".lock", "manifest.json", shard_name(0), shard_name(1), shard_name(2)]    # old shards gone


def test_corrupted_and_missing_shards_are_reported(run_dir, tmp_path):
    extract(run_dir / "encoder.pt", "test", tmp_path, **FAST)
    split = tmp_path / "test"
    shard = split / shard_name(1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"):
        FeatureStore.open(split, verify=True)
    (split / shard_name(2)).unlink()
    with pytest.raises(StoreError, match="missing"):
        FeatureStore.open(split)
    extract(run_dir / "encoder.pt", "test", tmp_path, **FAST)    # a rerun repairs both
    FeatureStore.open(split, verify=True)


def test_pixels_store_the_images(tmp_path):
    write_stl10_binary(tmp_path / "stl", n_train=7, n_test=2, n_unlabeled=3)
    data = ["data.name=stl10", f"data.root={tmp_path / 'stl'}", "data_transforms.input_shape=(96,96,3)"]
    summary = extract("pixels", "train", tmp_path / "px", data, rows_per_shard=4, batch_size=3, progress=False)
    assert summary["dim"] == 27_648 and summary["n_shards"] == 2
    store, emb, labels, indices = read_store(tmp_path / "px" / "train")
    images, expected_labels = STL10(tmp_path / "stl", "train", 96).get_batch(np.arange(7))
    np.testing.assert_array_equal(emb, images.reshape(7, -1).numpy().astype(np.float32) / 255.0)
    assert np.array_equal(labels, expected_labels.numpy()) and np.array_equal(indices, np.arange(7))
    assert store.attrs["encoder"] == "pixels" and store.attrs["checkpoint_sha256"] is None


def test_stl10_unlabeled_split_stores_minus_one_labels(run_dir, tmp_path):
    write_stl10_binary(tmp_path / "stl", n_train=3, n_test=2, n_unlabeled=11)
    summary = extract(run_dir / "encoder.pt", "unlabeled", tmp_path / "f", [f"data.root={tmp_path / 'stl'}",
                      "data.name=stl10", "data.max_images=0"], **FAST)
    store, emb, labels, _ = read_store(tmp_path / "f" / "unlabeled")
    assert summary["n_rows"] == 11 and emb.shape == (11, 512) and (labels == -1).all()
    assert store.attrs["image_size"] == 32                  # the checkpoint's size: 96 px resized


def test_torchvision_state_dict_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    summary = extract(tmp_path / "resnet18.pth", "test", tmp_path / "f", ["data.name=digits",
                      "data_transforms.input_shape=(32,32,3)", "data.max_images=20"], **FAST)
    store, emb, _, _ = read_store(tmp_path / "f" / "test")
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = net.eval()(eval_transform(Digits("test", 32, max_images=20).images, 32)).numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-5, rtol=0)
    assert summary["n_rows"] == 20 and store.attrs["step"] is None and store.attrs["encoder"] == "resnet18"


def test_image_folder_stores_relative_paths(run_dir, tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("cat", 3), ("dog", 2)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (40 + 10 * i, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    data = ["data.name=folder", f"data.root={tmp_path / 'imgs'}"]
    extract(run_dir / "encoder.pt", "train", tmp_path / "a", data, rows_per_shard=3, batch_size=2,
            num_workers=0, progress=False)
    store, emb, labels, _ = read_store(tmp_path / "a" / "train")
    assert store.paths() == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png"]
    assert labels.tolist() == [0, 0, 0, 1, 1] and store.attrs["classes"] == ["cat", "dog"]
    extract(run_dir / "encoder.pt", "train", tmp_path / "b", data, rows_per_shard=3, batch_size=2,
            num_workers=2, progress=False)                    # DataLoader worker processes: same bytes
    assert shard_hashes(tmp_path / "b" / "train") == shard_hashes(tmp_path / "a" / "train")


@pytest.mark.long
def test_torchrun_two_processes_hold_each_sample_once(run_dir, tmp_path):
    one = extract(run_dir / "encoder.pt", "test", tmp_path / "one", rows_per_shard=20, batch_size=16,
                  progress=False)
    # the launcher a warm fork, its workers cold processes (torchrun starts them: 1 OpenMP thread each)
    proc = warm_process.run(["-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29531",
                             "-m", "byol.extract", run_dir / "encoder.pt", "--split", "test", "--out", tmp_path / "two",
                             "--rows-per-shard", "20", "--batch-size", "16", "--device", "cpu", "--no-progress"],
                            cwd=REPO, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["n_rows"] == 96 and summary["n_shards"] == one["n_shards"] == 5
    _, emb2, labels2, idx2 = read_store(tmp_path / "two" / "test")
    _, emb1, labels1, idx1 = read_store(tmp_path / "one" / "test")
    assert np.array_equal(idx2, np.arange(96)) and np.array_equal(labels2, labels1)
    np.testing.assert_allclose(emb2, emb1, atol=1e-5, rtol=0)


def test_cli_prints_json_and_reports_bad_input_in_one_line(run_dir, tmp_path, capsys):
    main([str(run_dir / "encoder.pt"), "--split", "test", "--out", str(tmp_path / "f"), "--no-progress",
          "--rows-per-shard", "50", "data.max_images=60"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_rows"] == 60 and summary["n_shards"] == 2

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run_dir / "encoder.pt").read_bytes()[:5000])
    cases = [([str(tmp_path / "missing.pt"), "--split", "test"], "missing.pt"),
             ([str(truncated), "--split", "test"], "truncated.pt"),
             ([str(run_dir / "encoder.pt"), "--split", "nosuch"], "nosuch"),
             ([str(run_dir / "encoder.pt"), "--split", "train", "data.name=stl10",
               f"data.root={tmp_path / 'nodata'}"], "train_X.bin")]
    for argv, named in cases:
        with pytest.raises(SystemExit) as stopped:
            main(argv + ["--out", str(tmp_path / "g"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert stopped.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert named in err

    proc = warm_process.run(["-m", "byol.extract", tmp_path / "nope.pt", "--out", tmp_path / "g"], cwd=REPO,
                            timeout=120)    # a process of its own: what the shell sees
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "nope.pt" in proc.stderr and "Traceback" not in proc.stderr
