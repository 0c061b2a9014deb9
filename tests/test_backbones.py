"""Any backbone: torchvision families by builder name, a small ViT from its class, a timm model,
and the Python API around a custom nn.Module. Each trains a step with the real trainer and is
extracted with the real extraction, on tiny inputs (32 px, ResNet-18's small stem 16 px; a few dozen digits)."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from byol import BYOL
from byol.base.errors import ConfigError
from byol.config import load_config
from byol.encoders.build import build_encoder
from byol.extract.export_command import export
from byol.extract.extract_command import extract
from byol.extract.latent_command import generate
from byol.pretrain.loop import train
from byol.store import FeatureStore
from testkit import TINY_DATA

SMALL_VIT = ("network.kwargs={image_size: 32, patch_size: 8, num_layers: 2, num_heads: 2, "
             "hidden_dim: 32, mlp_dim: 64}")
BACKBONES = {   # network overrides -> feature dim the encoder must have
    # the small stem keeps every pixel to layer1 (16x the work of the standard stem): at 16 px, 4x cheaper
    "resnet18": (["network.name=resnet18", "network.small_stem=true", "data_transforms.input_shape=(16,16,3)"], 512),
    "convnext_tiny": (["network.name=convnext_tiny"], 768),
    "efficientnet_b0": (["network.name=efficientnet_b0"], 1280),
    "mobilenet_v3_small": (["network.name=mobilenet_v3_small"], 1024),
    "VisionTransformer": (["network.name=VisionTransformer", SMALL_VIT], 32),
    "timm:test_resnet": (["network.name=timm:test_resnet"], 96),
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_trains_and_extracts(name, tmp_path):
    overrides, dim = BACKBONES[name]
    cfg = load_config(None, [*TINY_DATA, "data.max_images=32", "trainer.batch_size=8", "trainer.max_steps=1",
                             "trainer.knn_every=1", f"trainer.run_dir={tmp_path / 'run'}", *overrides])
    summary = train(cfg)
    assert summary["steps"] == 1 and np.isfinite(summary["final_loss"])
    assert 0 <= summary["knn_top1"] <= 100                                      # the kNN monitor ran
    meta = json.loads((tmp_path / "run" / "encoder.json").read_text())
    assert meta["config"]["network"]["name"] == cfg.network.name and meta["feature_dim"] == dim   # names its network
    # the encoder file alone rebuilds the network: extraction reads nothing else
    out = extract(tmp_path / "run" / "encoder.pt", "test", tmp_path / "features", ["data.max_images=16"],
                  progress=False)
    assert out["dim"] == dim and out["n_rows"] == 16
    store = FeatureStore.open(tmp_path / "features" / "test", verify=True)
    x = store.to_array()
    assert x.shape == (16, dim) and np.isfinite(x).all() and x.std() > 0
    latent = generate(tmp_path / "run" / "encoder.pt", ["split:test"], tmp_path / "test.npy", fmt="npy",
                      overrides=["data.max_images=16"], progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "test.npy"), x, rtol=1e-5, atol=1e-5)   # same vectors
    assert latent["dim"] == dim
    exported = export(tmp_path / "run" / "encoder.pt", "torchscript", tmp_path / "encoder.ts")
    assert exported["ok"] and exported["output_dim"] == dim


def test_unknown_networks_and_misplaced_options_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="config key 'network.name': unknown network 'resnet_nope'"):
        load_config(None, ["network.name=resnet_nope"])
    with pytest.raises(ConfigError, match="config key 'network.small_stem'"):
        build_encoder("convnext_tiny", small_stem=True)
    with pytest.raises(ConfigError, match="no classifier rule for squeezenet1_0"):
        build_encoder("squeezenet1_0")
    cfg = load_config(None, [*TINY_DATA, "network.name=vit_b_16", "trainer.max_steps=1",
                             f"trainer.run_dir={tmp_path / 'run'}"])          # vit_b_16 wants 224 px, gets 32
    with pytest.raises(ConfigError, match="vit_b_16 cannot take 32x32 images"):
        train(cfg)


class TinyNet(nn.Module):
    """A user's own network: conv features, pooled, then a classifier the API must remove."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.features(x))


def batch(n=16, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return (nn.functional.interpolate(coarse, size=size, mode="bilinear") * 255).to(torch.uint8)


def test_python_api_trains_a_custom_module_and_moves_the_target_by_ema():
    torch.manual_seed(0)
    net = TinyNet()
    learner = BYOL(net, image_size=32, projection_size=16, projection_hidden_size=64, tau=0.9)
    assert isinstance(net.fc, nn.Identity) and learner.feature_dim == 32   # classifier removed in place
    images = batch()
    opt = torch.optim.SGD(learner.parameters(), lr=0.05, momentum=0.9)

    def fixed_loss() -> float:     # the same views every time: the loss on a fixed batch
        with torch.no_grad():
            return float(learner(images, torch.Generator().manual_seed(123)))

    before = fixed_loss()
    for step in range(30):
        loss = learner(images, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        old_target = [p.clone() for p in learner.target.parameters()]
        online = [p.detach().clone() for p in list(learner.online.encoder.parameters())
                  + list(learner.online.projector.parameters())]
        learner.update_target()
        for t_old, o, t_new in zip(old_target, online, learner.target.parameters()):
            torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * o)          # xi <- tau xi + (1 - tau) theta
    assert fixed_loss() < 0.7 * before, (before, fixed_loss())
    features = learner.embed(images)
    assert features.shape == (16, 32) and learner.encoder.training          # embed leaves train mode as it was
    torch.testing.assert_close(features, net.eval()(
        (images.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)))              # `net` itself was trained
    assert float(learner(images.float() / 255).detach()) > 0                   # float input in [0, 1] too


def test_python_api_layer_and_simsiam():
    import torchvision
    net = torchvision.models.resnet18()
    learner = BYOL(net, image_size=32, layer="layer3", projection_size=8, projection_hidden_size=16,
                   use_momentum=False)
    assert learner.target is None and learner.feature_dim == 256              # layer3's channels, pooled
    loss = learner(batch(4))
    loss.backward()
    assert net.layer3[0].conv1.weight.grad is not None                         # the node shares net's weights
    learner.update_target()                                                    # SimSiam: nothing to do
    with pytest.raises(ValueError, match="not a node"):
        BYOL(torchvision.models.resnet18(), image_size=32, layer="layer9")
