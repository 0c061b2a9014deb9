"""latent_eval/generate_latent_out.py: latent vectors of files, folders, lists and splits, equal to
`byol.extract.extract_command`'s; odd images converted or reported; store/npy/csv outputs; heads; --strict; a
stopped store resumed without --overwrite; no pickle code run (CPU, seconds)."""
import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from byol.base.errors import ConfigError, StoreError
from byol.encoders.build import build_encoder
from byol.evaluate.head_file import head_record, save_head
from byol.evaluate.heads import build_head, head_outputs
from byol.extract.extract_command import extract
from byol.extract.latent_command import generate, main as latent_main
from byol.store import FeatureStore, ShardSink

import warm_process
from testkit import REPO, TINY_RESNET, run_main, write_encoder

SCRIPT = REPO / "latent_eval" / "generate_latent_out.py"
GOOD = ["cls/rgb.jpg", "cls/gray.png", "rgba.png", "cmyk.jpg", "deep16.png", "tiny.png", "large.jpg",
        "sub/deeper/palette.gif"]
BAD = ["fake.jpg", "zero.jpg"]


@pytest.fixture(scope="module")
def encoder_pt(tmp_path_factory):
    """encoder.pt as training exports it (tests/testkit.py: write_encoder), with random weights and BN
    statistics: no training step needed, and random statistics show that eval-mode BN is used."""
    path = tmp_path_factory.mktemp("latent-run") / "encoder.pt"
    net, g = build_encoder("resnet18"), torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return write_encoder(path, net, TINY_RESNET, step=1)


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """Every kind of surprise a real folder holds: modes, depths, sizes, and two non-images."""
    d = tmp_path_factory.mktemp("odd") / "imgs"
    for sub in ("cls", "sub/deeper"):
        (d / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(d / "cls/rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (25, 20), dtype=np.uint8)).save(d / "cls/gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 30, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16)).save(d / "deep16.png")
    assert Image.open(d / "deep16.png").mode.startswith("I")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(d / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(d / "large.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).convert("P").save(d / "sub/deeper/palette.gif")
    (d / "fake.jpg").write_text("not an image")
    (d / "zero.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


def rows_by_path(store_dir, root):
    store = FeatureStore.open(store_dir, verify=True)
    emb = store.to_array()
    return {Path(p).relative_to(root).as_posix() if Path(p).is_absolute() else p: emb[i]
            for i, p in enumerate(store.paths())}


def test_folder_vectors_equal_byol_extract(encoder_pt, odd_folder, tmp_path):
    extract(encoder_pt, "train", tmp_path / "ref", ["data.name=folder", f"data.root={odd_folder}"],
            batch_size=3, num_workers=0, progress=False)
    expected = rows_by_path(tmp_path / "ref" / "train", odd_folder)
    summary = generate(encoder_pt, [str(odd_folder)], tmp_path / "lat", batch_size=3, progress=False,
                       rows_per_shard=5)
    assert summary["n_inputs"] == 10 and summary["n_written"] == 8 and summary["n_skipped"] == 2
    assert summary["dim"] == 512 and summary["format"] == "store"
    got = rows_by_path(tmp_path / "lat", odd_folder)
    assert sorted(got) == sorted(expected) == sorted(GOOD)
    for name in GOOD:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=0, err_msg=name)
    store = FeatureStore.open(tmp_path / "lat")
    assert [s["rows"] for s in store.shards] == [5, 3]
    assert (store.labels() == -1).all() and store.attrs["encoder"] == "resnet18"
    report = json.loads((tmp_path / "lat" / "skipped.json").read_text())
    assert sorted(Path(s["path"]).name for s in report["skipped"]) == BAD
    assert any("zero-byte" in s["reason"] for s in report["skipped"])


def test_npy_csv_and_head_outputs(encoder_pt, odd_folder, tmp_path):
    head = build_head("mlp", 512, 3, hidden=(8,), classes=[2, 5, 7])
    save_head(tmp_path / "head.safetensors", head_record(head, "mlp", {}, {}))
    files = [str(odd_folder / n) for n in GOOD[:3]] + [str(odd_folder / "fake.jpg")]
    (tmp_path / "list.txt").write_text(f"# a comment\n\n{odd_folder / GOOD[3]}\n")
    inputs = files + [str(tmp_path / "list.txt")]
    store = generate(encoder_pt, inputs, tmp_path / "s", head=str(tmp_path / "head.safetensors"), progress=False)
    npy = generate(encoder_pt, inputs, tmp_path / "v.npy", fmt="npy", head=str(tmp_path / "head.safetensors"),
                   progress=False, batch_size=2)
    csv_ = generate(encoder_pt, inputs, tmp_path / "t", fmt="csv", head=str(tmp_path / "head.safetensors"), progress=False)
    for s in (store, npy, csv_):
        assert (s["n_inputs"], s["n_written"], s["n_skipped"]) == (5, 4, 1)
    emb = FeatureStore.open(tmp_path / "s").to_array()
    with h5py.File(tmp_path / "s" / "shard-00000.h5") as f:
        hidden, probs, pred = f["head_hidden"][:], f["head_probs"][:], f["head_pred"][:]
        assert json.loads(f.attrs["head_classes"]) == [2, 5, 7]
        assert f["indices"][:].tolist() == [0, 1, 2, 4]     # input 3 (fake.jpg) skipped
    expected = head_outputs(head, emb)
    np.testing.assert_allclose(hidden, expected.hidden, atol=1e-5)
    np.testing.assert_allclose(probs, expected.probs, atol=1e-6)
    assert pred.tolist() == expected.pred.tolist() and set(pred) <= {2, 5, 7} and hidden.shape == (4, 8)

    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), emb, atol=1e-6)
    assert (tmp_path / "v.paths.txt").read_text().splitlines() == files[:3] + [str(odd_folder / GOOD[3])]
    np.testing.assert_allclose(np.load(tmp_path / "v.head_probs.npy"), probs, atol=1e-6)
    assert np.load(tmp_path / "v.head_pred.npy").tolist() == pred.tolist()
    assert json.loads((tmp_path / "v.skipped.json").read_text())["skipped"][0]["path"] == files[3]

    lines = (tmp_path / "t.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["path", "label", "f0"] and header[-4:] == ["p_2", "p_5", "p_7", "pred"]
    assert len(header) == 2 + 512 + 8 + 3 + 1 and len(lines) == 5
    table = np.array([row.split(",")[2:2 + 512] for row in lines[1:]], dtype=np.float32)
    np.testing.assert_allclose(table, emb, atol=1e-6)


def test_store_stopped_midway_resumes_without_overwrite_to_the_uninterrupted_store(encoder_pt, odd_folder,
                                                                                    tmp_path, monkeypatch):
    """A stop after shards 0-2 (inputs 0-6, fake.jpg = input 4 skipped among them); the rerun without
    --overwrite keeps them, embeds inputs 7-9 and reports fake.jpg again: the uninterrupted store."""
    settings = dict(batch_size=2, rows_per_shard=2, progress=False)
    reference = generate(encoder_pt, [str(odd_folder)], tmp_path / "ref", **settings)
    real_put, puts = ShardSink.put, []

    class Stopped(Exception):
        pass

    def put_then_stop(self, *args, **kwargs):     # the 4th group (shard 3) never arrives: the run stops
        puts.append(args[0])
        if len(puts) == 4:
            deadline = time.monotonic() + 30
            while not (tmp_path / "lat" / "shard-00002.h5").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            raise Stopped
        return real_put(self, *args, **kwargs)
    monkeypatch.setattr(ShardSink, "put", put_then_stop)
    with pytest.raises(Stopped):
        generate(encoder_pt, [str(odd_folder)], tmp_path / "lat", **settings)
    monkeypatch.undo()
    assert puts == [0, 1, 2, 3] and not (tmp_path / "lat" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "lat").glob("shard-*.h5")) == [f"shard-0000{k}.h5" for k in range(3)]
    assert not list((tmp_path / "lat").glob(".*tmp*"))

    summary = generate(encoder_pt, [str(odd_folder)], tmp_path / "lat", **settings)
    ref, lat = FeatureStore.open(tmp_path / "ref", verify=True), FeatureStore.open(tmp_path / "lat", verify=True)
    assert [s["sha256"] for s in lat.shards] == [s["sha256"] for s in ref.shards] and len(lat.shards) == 4
    assert lat.settings == ref.settings and list(lat.paths()) == list(ref.paths())
    assert (tmp_path / "lat" / "skipped.json").read_text() == (tmp_path / "ref" / "skipped.json").read_text()
    assert (summary["n_written"], summary["n_skipped"]) == (reference["n_written"], reference["n_skipped"]) == (8, 2)
    with pytest.raises(ConfigError, match="already holds output"):     # a complete store is still refused
        generate(encoder_pt, [str(odd_folder)], tmp_path / "lat", **settings)
    (tmp_path / "lat" / "manifest.json").unlink()                       # as if stopped before the manifest:
    with pytest.raises(StoreError, match="other settings"):             # other settings are refused
        generate(encoder_pt, [str(odd_folder)], tmp_path / "lat", **dict(settings, rows_per_shard=3))


def test_split_input_equals_extract(encoder_pt, tmp_path):
    extract(encoder_pt, "test", tmp_path / "ref", ["data.max_images=40"], batch_size=16, progress=False)
    ref = FeatureStore.open(tmp_path / "ref" / "test")
    summary = generate(encoder_pt, ["split:test"], tmp_path / "lat", fmt="npy", batch_size=16, progress=False,
                       overrides=["data.max_images=40"])
    assert summary["n_written"] == ref.n_rows == 40
    np.testing.assert_allclose(np.load(tmp_path / "lat.npy"), ref.to_array(), atol=1e-5, rtol=0)
    assert (tmp_path / "lat.paths.txt").read_text().splitlines()[:2] == ["split:test/0", "split:test/1"]


def test_npy_header_that_would_change_size_fails_and_leaves_no_file(encoder_pt, odd_folder, tmp_path, monkeypatch):
    """The row count goes into the .npy header in place at the end, which relies on numpy padding the
    header for it. A header whose size followed the count (a numpy without that padding) would shift
    every row: the run must fail and leave nothing under the output's names."""
    real = np.lib.format.write_array_header_1_0

    def unpadded(fp, d):      # a count of rows makes the header 64 bytes longer than the empty one
        real(fp, d)
        fp.write(b" " * 64 if d["shape"][0] else b"")
    monkeypatch.setattr(np.lib.format, "write_array_header_1_0", unpadded)
    with pytest.raises(StoreError, match="header"):
        generate(encoder_pt, [str(odd_folder / GOOD[0])], tmp_path / "v", fmt="npy", progress=False)
    assert not list(tmp_path.iterdir())     # no .npy, .paths.txt, temp file or report


def test_cli_strict_names_bad_files_and_summary_line(encoder_pt, odd_folder, tmp_path, capsys):
    code, out, err = run_main(latent_main, ["--checkpoint", encoder_pt, "--input", odd_folder / GOOD[0],
                              odd_folder / "zero.jpg", "--out", tmp_path / "o", "--format", "csv", "--no-progress"],
                              capsys)
    assert code == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert {k: summary[k] for k in ("n_inputs", "n_written", "n_skipped", "dim", "format")} == \
        {"n_inputs": 2, "n_written": 1, "n_skipped": 1, "dim": 512, "format": "csv"}
    code, out, err = run_main(latent_main, ["--checkpoint", encoder_pt, "--input", odd_folder, "--out", tmp_path / "p",
                              "--strict", "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "fake.jpg" in error[0] and "zero.jpg" in error[0]
    code, _, err = run_main(latent_main, ["--checkpoint", encoder_pt, "--input", odd_folder, "--out", tmp_path / "p",
                            "--no-progress"], capsys)
    assert code == 2 and "--overwrite" in err


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_checkpoint_is_never_unpickled(tmp_path, odd_folder):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "byol-encoder", "state_dict": {}, "payload": _Evil(marker)}, evil)
    run = warm_process.run([SCRIPT, "--checkpoint", evil, "--input", odd_folder / GOOD[0], "--out", tmp_path / "o",
                            "--no-progress"], cwd=REPO)
    assert run.returncode == 2 and not marker.exists()
    assert "--trust-checkpoint" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()
    torch.load(evil, weights_only=False)   # the payload is real: unpickling it does run code
    assert marker.exists()
