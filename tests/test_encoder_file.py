"""encoder.pt is a plain torchvision state dict, with its metadata in encoder.json and the same tensors in
encoder.safetensors; the wrapped encoder.pt of before the first release is refused with one clear error
everywhere; a small stem fails loudly in a plain resnet18 (CPU, seconds)."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from byol.base.atomic import file_sha256
from byol.base.errors import CheckpointError
from byol.config import load_config
from byol.data.augment import IMAGENET_MEAN, IMAGENET_STD
from byol.encoders.build import build_encoder
from byol.encoders.files import load_encoder
from byol.encoders.source import load_source
from byol.extract.export_command import export
from byol.extract.extract_command import extract
from byol.extract.latent_command import generate
from byol.pretrain.checkpoint import write_encoder_files, load_training_checkpoint
from byol.pretrain.loop import train
from byol.pretrain.setup import build_networks
from byol.store import FeatureStore

from testkit import TINY_RESNET

SMALL = TINY_RESNET + ["data.max_images=16", "data_transforms.input_shape=(16,16,3)", "trainer.batch_size=8",
                "trainer.max_steps=1"]
FAST = dict(rows_per_shard=8, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One training step of a resnet18 at 16 px: encoder.pt, encoder.safetensors, encoder.json."""
    run = tmp_path_factory.mktemp("encoder-file") / "run"
    train(load_config(None, SMALL + [f"trainer.run_dir={run}"]))
    return run


def test_encoder_pt_loads_into_torchvision_resnet18(run_dir):
    state = torch.load(run_dir / "encoder.pt", weights_only=True)
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    assert all(v.device.type == "cpu" for v in state.values())
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    reference = net.state_dict()
    assert set(state) == set(reference) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(reference[k], v) for k, v in state.items())     # every encoder key was loaded
    online = load_training_checkpoint(run_dir / "checkpoints" / "last.pt")["online"]
    trained = {k[len("encoder."):]: v for k, v in online.items() if k.startswith("encoder.")}
    assert trained.keys() == state.keys() and all(torch.equal(trained[k], state[k]) for k in state)
    net.fc = torch.nn.Identity()
    source = load_source(run_dir / "encoder.pt")[0].to(torch.device("cpu"))    # eval mode
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), source.module(x), atol=0, rtol=0)


def test_encoder_json_records_the_metadata_and_the_weights_digests(run_dir):
    meta = json.loads((run_dir / "encoder.json").read_text())
    assert meta["format"] == "byol-encoder" and meta["version"] == 3
    assert (meta["small_stem"], meta["feature_dim"]) == (False, 512)
    assert "network" not in meta and meta["config"]["network"]["name"] == "resnet18"   # named once, with its kwargs
    assert meta["image_size"] == 16 and meta["step"] == 1
    assert meta["normalisation"]["mean"] == list(IMAGENET_MEAN) and meta["normalisation"]["std"] == list(IMAGENET_STD)
    assert meta["config"]["data"]["name"] == "digits" and meta["config"]["data"]["max_images"] == 16
    assert meta["config"]["data_transforms"]["input_shape"] == [16, 16, 3]
    assert {"byol", "torch", "torchvision"} <= set(meta["versions"])
    for suffix in ("pt", "safetensors"):
        weights = run_dir / f"encoder.{suffix}"
        entry = meta["weights"][suffix]
        assert entry == {"file": weights.name, "sha256": file_sha256(weights), "bytes": weights.stat().st_size}
    # the files' mode is the one the umask gives, so whoever reads the run folder reads them
    # (safetensors' own writer made its file 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert {(run_dir / f"encoder.{s}").stat().st_mode & 0o777 for s in ("pt", "safetensors", "json")} \
        == {0o666 & ~umask}
    # the json is written last (after both weight files it describes)
    assert (run_dir / "encoder.json").stat().st_mtime_ns >= (run_dir / "encoder.safetensors").stat().st_mtime_ns \
        >= (run_dir / "encoder.pt").stat().st_mtime_ns


def test_safetensors_holds_the_same_tensors_without_pickle(run_dir):
    from safetensors.numpy import load_file as load_arrays
    state = torch.load(run_dir / "encoder.pt", weights_only=True)
    arrays = load_arrays(str(run_dir / "encoder.safetensors"))         # no torch needed to read it
    assert arrays.keys() == state.keys()
    assert all(np.array_equal(arrays[k], v.numpy()) for k, v in state.items())
    source, cfg = load_source(run_dir / "encoder.safetensors")
    assert (source.image_size, source.step, cfg.data.name) == (16, 1, "digits")
    assert source.checkpoint_sha256 == file_sha256(run_dir / "encoder.safetensors")


def test_plain_file_takes_its_metadata_from_the_json_else_from_its_shapes(run_dir, tmp_path):
    source, cfg = load_source(run_dir / "encoder.pt")
    assert (source.name, source.image_size, source.step) == ("resnet18", 16, 1)
    assert cfg.data.name == "digits" and cfg.data.max_images == 16 and cfg.trainer.batch_size == 8
    assert source.normalisation == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    # renamed together: the json is found by stem and matched by digest, not by the name it records
    for suffix in ("pt", "json"):
        shutil.copy(run_dir / f"encoder.{suffix}", tmp_path / f"renamed.{suffix}")
    assert load_source(tmp_path / "renamed.pt")[0].image_size == 16
    alone = tmp_path / "alone" / "encoder.pt"
    alone.parent.mkdir()
    shutil.copy(run_dir / "encoder.pt", alone)
    _, meta = load_encoder(alone)
    assert meta == {"network": "resnet18", "small_stem": False, "sha256": file_sha256(alone)}
    source, cfg = load_source(alone)
    assert source.step is None and source.image_size == load_config(None, []).data_transforms.input_shape[0]
    assert cfg.data.name == load_config(None, []).data.name


def test_a_json_that_does_not_describe_the_weights_is_refused(run_dir, tmp_path):
    shutil.copy(run_dir / "encoder.json", tmp_path / "encoder.json")
    state = torch.load(run_dir / "encoder.pt", weights_only=True)
    state["conv1.weight"] = state["conv1.weight"] + 1                 # other weights under the same name
    torch.save(state, tmp_path / "encoder.pt")
    with pytest.raises(CheckpointError, match=r"does not describe .*encoder\.pt.*move 'encoder\.json' away"):
        load_source(tmp_path / "encoder.pt")
    with pytest.raises(CheckpointError, match="does not describe"):
        build_networks(load_config(None, SMALL + [f"network.fine_tune_from={tmp_path / 'encoder.pt'}"]))
    (tmp_path / "encoder.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_source(tmp_path / "encoder.pt")
    (tmp_path / "encoder.json").write_text(json.dumps({"some": "other tool's file"}))
    assert load_source(tmp_path / "encoder.pt")[0].step is None      # not ours: ignored
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((run_dir / "encoder.safetensors").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_source(truncated)


def test_extract_latent_export_and_fine_tuning_read_the_encoder_file(run_dir, tmp_path):
    rows = FeatureStore.open(extract(run_dir / "encoder.pt", "test", tmp_path / "new", **FAST)["split_dir"])
    assert len(rows) == 16 and rows.attrs["image_size"] == 16 and rows.attrs["step"] == 1
    generate(run_dir / "encoder.pt", ["split:test"], tmp_path / "latent", fmt="npy", progress=False, batch_size=8)
    np.testing.assert_array_equal(np.load(tmp_path / "latent.npy"), rows.to_array())
    exported = export(run_dir / "encoder.pt", "torchscript", tmp_path / "encoder.ts")
    assert exported["image_size"] == 16 and exported["max_abs_diff"] <= 1e-5
    state = torch.load(run_dir / "encoder.pt", weights_only=True)
    for pretrained in (run_dir / "encoder.pt", run_dir):                # the file, or the run directory
        online, _ = build_networks(load_config(None, SMALL + [f"network.fine_tune_from={pretrained}"]))
        assert all(torch.equal(v, state[k]) for k, v in online.encoder.state_dict().items())


def test_a_version_2_encoder_json_still_loads(run_dir, tmp_path):
    """Version 2 also named the network at the top level (the same name as config.network.name)."""
    old = Path(shutil.copytree(run_dir, tmp_path / "v2"))
    meta = json.loads((old / "encoder.json").read_text())
    meta.update(version=2, network=meta["config"]["network"]["name"])
    (old / "encoder.json").write_text(json.dumps(meta))
    state, loaded = load_encoder(old / "encoder.pt")
    assert loaded["network"] == "resnet18" and loaded["image_size"] == 16 and loaded["small_stem"] is False
    assert load_source(old / "encoder.pt")[0].dim == 512


def test_the_wrapped_encoder_file_of_before_the_first_release_is_refused_naming_it(run_dir, tmp_path):
    """encoder.pt as training wrote it before the first release: the state dict inside a metadata wrapper."""
    meta = json.loads((run_dir / "encoder.json").read_text())
    old = tmp_path / "old" / "encoder.pt"
    old.parent.mkdir()
    torch.save({"format": "byol-encoder", "state_dict": torch.load(run_dir / "encoder.pt", weights_only=True),
                "network": meta["config"]["network"]["name"], "small_stem": meta["small_stem"], "step": meta["step"],
                "config": meta["config"]}, old)
    refused = r"old/encoder\.pt' is an encoder file in the format written before byol's first release.*retrain"
    for read in (lambda: load_encoder(old), lambda: load_source(old),
                 lambda: extract(old, "test", tmp_path / "from-old", **FAST),
                 lambda: generate(old, ["split:test"], tmp_path / "latent", fmt="npy", progress=False, batch_size=8),
                 lambda: export(old, "torchscript", tmp_path / "old.ts"),
                 lambda: build_networks(load_config(None, SMALL + [f"network.fine_tune_from={old}"]))):
        with pytest.raises(CheckpointError, match=refused):
            read()
    assert not (tmp_path / "from-old").exists() and not (tmp_path / "old.ts").exists()


def test_small_stem_encoder_fails_loudly_in_a_plain_resnet18(tmp_path):
    cfg = load_config(None, SMALL + ["network.small_stem=true", f"trainer.run_dir={tmp_path}"])
    torch.manual_seed(0)
    online, _ = build_networks(cfg)
    path = write_encoder_files(cfg, online, 0, tmp_path / "encoder.pt")
    assert json.loads((tmp_path / "encoder.json").read_text())["small_stem"] is True
    state = torch.load(path, weights_only=True)
    with pytest.raises(RuntimeError, match=r"size mismatch for conv1\.weight"):
        torchvision.models.resnet18().load_state_dict(state, strict=False)
    net = build_encoder("resnet18", small_stem=True)                   # docs/stages/pretrain.md's one-liner
    net.load_state_dict(torch.load(path, weights_only=True))           # strict: every key, nothing more
    plain = torchvision.models.resnet18()                              # the same page's recipe without byol
    plain.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    plain.maxpool, plain.fc = torch.nn.Identity(), torch.nn.Identity()
    plain.load_state_dict(state)
    source = load_source(path)[0].to(torch.device("cpu"))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), source.module(x), atol=0, rtol=0)
        torch.testing.assert_close(plain.eval()(x), source.module(x), atol=0, rtol=0)
