"""Foreign checkpoint layouts converted by name (byol-pytorch, sthalles/PyTorch-BYOL, solo-learn,
mmpretrain) and the encoder exported to TorchScript / ONNX (CPU, seconds)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from byol.base.errors import CheckpointError
from byol.encoders.build import build_encoder
from byol.encoders.files import encoder_state_from, load_file
from byol.encoders.foreign import STHALLES_CHILDREN
from byol.extract.export_command import export

import warm_process
from testkit import write_encoder

REPO = Path(__file__).resolve().parents[1]


def randomised(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affines too, so a wrongly mapped BN layer changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def images(size=32, n=2):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def converted_encoder(obj, tmp_path, name="ckpt.pt"):
    """Save `obj`, load it back the safe way (weights_only) and build the encoder from it."""
    torch.save(obj, tmp_path / name)
    state, meta = encoder_state_from(load_file(tmp_path / name), tmp_path / name)
    net = build_encoder(meta["network"], meta["small_stem"])
    net.load_state_dict(state, strict=True)
    return net.eval(), meta


def features(backbone: nn.Module, x):
    with torch.no_grad():
        return backbone(x).flatten(1)


def test_byol_pytorch_learner_state_dict(tmp_path):
    byol_pytorch = pytest.importorskip("byol_pytorch", reason="pip install byol-pytorch (test extra)")
    resnet = torchvision.models.resnet18(weights=None)
    learner = byol_pytorch.BYOL(resnet, image_size=32, hidden_layer="avgpool", projection_size=16,
                                projection_hidden_size=32)
    state = learner.state_dict()
    assert any(k.startswith("online_encoder.net.") for k in state)
    assert any(k.startswith("target_encoder.net.") for k in state)
    online = randomised(learner.online_encoder.net)
    state = learner.state_dict()   # with the randomised statistics
    net, meta = converted_encoder(state, tmp_path)
    assert meta["network"] == "resnet18" and meta["imported_from"] == "byol-pytorch"
    reference = nn.Sequential(*list(online.children())[:-1])   # without fc
    x = images()
    torch.testing.assert_close(features(net, x), features(reference, x), atol=1e-5, rtol=0)
    # The online encoder, not the target one, is used.
    with torch.no_grad():
        for p in learner.target_encoder.net.parameters():
            p.add_(1.0)
    net2, _ = converted_encoder(learner.state_dict(), tmp_path, "again.pt")
    torch.testing.assert_close(features(net2, x), features(reference, x), atol=1e-5, rtol=0)


def test_byol_pytorch_layout_without_the_package(tmp_path):
    """The documented key layout alone (runs even where byol-pytorch is not installed)."""
    resnet = randomised(torchvision.models.resnet18(weights=None))
    state = {f"online_encoder.net.{k}": v for k, v in resnet.state_dict().items()}
    state.update({f"target_encoder.net.{k}": v + 1 for k, v in resnet.state_dict().items()
                  if v.is_floating_point()})
    state["online_encoder.projector.net.0.weight"] = torch.zeros(16, 512)
    state["online_predictor.net.0.weight"] = torch.zeros(16, 16)
    net, _ = converted_encoder(state, tmp_path)
    resnet.fc = nn.Identity()
    x = images()
    torch.testing.assert_close(features(net, x), features(resnet, x), atol=1e-5, rtol=0)


def test_sthalles_pytorch_byol_model_pth(tmp_path):
    resnet = randomised(torchvision.models.resnet18(weights=None))
    encoder = nn.Sequential(*list(resnet.children())[:-1])   # sthalles: ResNet18.encoder
    assert [type(m).__name__ for m in encoder] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Sequential",
                                                   "Sequential", "Sequential", "Sequential", "AdaptiveAvgPool2d"]
    projection = nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16))
    online = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
              **{f"projetion.net.{k}": v for k, v in projection.state_dict().items()}}
    target = {k: v + 1 if v.is_floating_point() else v for k, v in online.items()}
    obj = {"online_network_state_dict": online, "target_network_state_dict": target,
           "optimizer_state_dict": torch.optim.SGD(projection.parameters(), lr=0.1).state_dict()}
    net, meta = converted_encoder(obj, tmp_path, "model.pth")
    assert meta["imported_from"] == "sthalles/PyTorch-BYOL" and set(STHALLES_CHILDREN.values()) >= {"conv1", "layer4"}
    x = images()
    torch.testing.assert_close(features(net, x), features(encoder, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("small_stem", [False, True])
def test_solo_learn_lightning_checkpoint(tmp_path, small_stem):
    backbone = build_encoder("resnet18", small_stem)   # solo-learn: torchvision resnet, fc = Identity
    randomised(backbone)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"momentum_backbone.{k}": v.clone() for k, v in backbone.state_dict().items()})
    state.update({"projector.0.weight": torch.zeros(32, 512), "classifier.weight": torch.zeros(10, 512),
                  "classifier.bias": torch.zeros(10)})
    obj = {"epoch": 3, "global_step": 100, "pytorch-lightning_version": "2.1.0", "state_dict": state,
           "optimizer_states": [], "lr_schedulers": []}
    net, meta = converted_encoder(obj, tmp_path)
    assert meta["small_stem"] is small_stem and meta["imported_from"].startswith("solo-learn")
    x = images()
    torch.testing.assert_close(features(net, x), features(backbone, x), atol=1e-5, rtol=0)


def test_mmpretrain_checkpoint(tmp_path):
    resnet = randomised(torchvision.models.resnet50(weights=None))
    resnet.fc = nn.Identity()
    # mmpretrain ResNet (deep_stem=False): conv1, bn1, layerI.J.{conv1..3, bn1..3, downsample.0/1}
    state = {f"backbone.{k}": v for k, v in resnet.state_dict().items()}
    state.update({"neck.fc.weight": torch.zeros(8, 2048), "head.fc.weight": torch.zeros(10, 2048)})
    obj = {"meta": {"mmpretrain_version": "1.2.0", "epoch": 1}, "state_dict": state}
    net, meta = converted_encoder(obj, tmp_path)
    assert meta["network"] == "resnet50"
    x = images(32, 1)
    torch.testing.assert_close(features(net, x), features(resnet, x), atol=1e-4, rtol=0)


def test_unmatched_tensors_are_listed_not_dropped(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    state = {f"backbone.{k}": v for k, v in resnet.state_dict().items()}
    state["backbone.layer1.0.extra.weight"] = torch.zeros(3)          # a tensor with no counterpart
    with pytest.raises(CheckpointError, match=r"layer1\.0\.extra\.weight"):
        converted_encoder({"state_dict": state}, tmp_path)
    state = {f"backbone.{k}": v for k, v in resnet.state_dict().items() if not k.startswith("layer4.1.bn2")}
    with pytest.raises(CheckpointError, match=r"not supplied: layer4\.1\.bn2"):
        converted_encoder({"state_dict": state}, tmp_path, "missing.pt")
    # Same tensors under the names of their neighbours (a positional mix-up): shapes disagree.
    sd = resnet.state_dict()
    state = {f"backbone.{k}": v for k, v in sd.items()}
    state["backbone.layer2.0.conv1.weight"], state["backbone.layer2.0.conv2.weight"] = \
        sd["layer2.0.conv2.weight"], sd["layer2.0.conv1.weight"]
    with pytest.raises(CheckpointError, match="shape mismatches"):
        converted_encoder({"state_dict": state}, tmp_path, "swapped.pt")
    deep = {"backbone.stem.0.weight": torch.zeros(32, 3, 3, 3), **state}
    with pytest.raises(CheckpointError, match="deep stem"):
        converted_encoder({"state_dict": deep}, tmp_path, "deep.pt")
    with pytest.raises(CheckpointError, match="known ResNet layout"):
        converted_encoder({"weights": {"a.b": torch.zeros(1)}}, tmp_path, "unknown.pt")


# ------------------------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def encoder_pt(tmp_path_factory):
    """encoder.pt as training exports it (tests/testkit.py: write_encoder): random weights and BN, 32 px digits."""
    root = tmp_path_factory.mktemp("export")
    net = randomised(build_encoder("resnet18"))
    return write_encoder(root / "encoder.pt", net, ["data.name=digits", "data_transforms.input_shape=(32,32,3)",
                                                     "network.small_stem=false"], step=7)


def test_export_torchscript(encoder_pt, tmp_path):
    summary = export(encoder_pt, "torchscript", tmp_path / "enc.ts")
    assert summary["max_abs_diff"] <= 1e-5 and summary["output_dim"] == 512
    spec = json.loads((tmp_path / "enc.ts.json").read_text())
    assert spec["input"]["shape"] == ["N", 3, 32, 32] and spec["output"]["shape"] == ["N", 512]
    assert spec["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    loaded = torch.jit.load(str(tmp_path / "enc.ts"))
    net = build_encoder("resnet18")
    net.load_state_dict(torch.load(encoder_pt, weights_only=True))   # a plain state dict
    x = images(32, 3)
    torch.testing.assert_close(loaded(x), features(net.eval(), x), atol=1e-5, rtol=0)


def test_export_on_a_full_disk_is_one_clear_line_and_leaves_no_file(encoder_pt, tmp_path):
    """A real refused write (RLIMIT_FSIZE: the kernel refuses bytes past the limit, EFBIG). torch's own
    TorchScript file writer aborted the process here: SIGABRT, a C++ stack dump, its temp file left."""
    out = tmp_path / "out" / "enc.ts"
    # SIGXFSZ ignored: write() past the limit fails with EFBIG instead of killing the process
    proc = warm_process.run(["-m", "byol", "export", encoder_pt, "--format", "torchscript", "--out", out],
                            cwd=REPO, file_size_limit=1_000_000)      # the file is ~45 MB
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"error: could not write '{out}': File too large" in proc.stderr and "Traceback" not in proc.stderr
    assert list(out.parent.iterdir()) == []


def test_export_onnx_cli(encoder_pt, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="pip install onnx onnxscript onnxruntime (test extra)")
    from byol.extract.export_command import main
    main([str(encoder_pt), "--format", "onnx", "--out", str(tmp_path / "enc.onnx")])   # in-process: faster
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["format"] == "onnx" and summary["max_abs_diff"] <= 1e-4
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    x = images(32, 5)   # another batch size than at export: the batch axis is dynamic
    net = build_encoder("resnet18")
    net.load_state_dict(torch.load(encoder_pt, weights_only=True))   # a plain state dict
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, features(net.eval(), x).numpy(), atol=1e-4, rtol=0)
    assert json.loads((tmp_path / "enc.onnx.json").read_text())["output_dim"] == 512


def test_export_refuses_a_pickled_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_malicious_bytes(marker))
    from byol.extract.export_command import main   # in-process (tests/test_latent.py runs a real subprocess)
    with pytest.raises(SystemExit) as exit_:
        main([str(evil), "--format", "torchscript", "--out", str(tmp_path / "x.ts")])
    assert exit_.value.code == 2 and "--trust-checkpoint" in capsys.readouterr().err and not marker.exists()
    assert not (tmp_path / "x.ts").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _malicious_bytes(marker) -> bytes:
    import io
    buf = io.BytesIO()
    torch.save({"format": "byol-encoder", "payload": _Evil(marker)}, buf)
    return buf.getvalue()
