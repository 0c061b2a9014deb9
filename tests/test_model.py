"""Networks, loss, EMA, optimisers, schedules and checkpoint files."""
import math

import pytest
import torch
import torchvision

from byol.base.errors import CheckpointError
from byol.config import Optimizer as OptimizerConfig
from byol.encoders.build import build_encoder
from byol.encoders.files import encoder_state_from, load_file
from byol.pretrain.checkpoint import atomic_save, load_training_checkpoint
from byol.pretrain.model import OnlineNetwork, TargetNetwork, byol_loss, collapse_indicator, regression_loss
from byol.pretrain.optim import (LARS, build_optimizer, ema_rate_at, learning_rate_at, parameter_groups,
                                 set_learning_rate)


def tiny_online():
    return OnlineNetwork(build_encoder("resnet18", small_stem=True), 512, hidden=32, proj_dim=16, pred_hidden=0)


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet50", 2048)])
def test_encoder_output_dims_and_torchvision_keys(name, dim):
    enc = build_encoder(name)
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, dim)
    plain = getattr(torchvision.models, name)()
    missing, unexpected = plain.load_state_dict(enc.state_dict(), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []


def test_small_stem_keeps_resolution():
    assert build_encoder("resnet18", small_stem=True).conv1.kernel_size == (3, 3)
    assert isinstance(build_encoder("resnet18", small_stem=True).maxpool, torch.nn.Identity)


def test_regression_loss_values():
    a = torch.tensor([[1.0, 0.0]])
    assert regression_loss(a, a * 5).item() == pytest.approx(0.0)
    assert regression_loss(a, -a).item() == pytest.approx(4.0)
    assert regression_loss(a, torch.tensor([[0.0, 2.0]])).item() == pytest.approx(2.0)


def test_byol_loss_is_symmetric_and_target_gets_no_gradient():
    torch.manual_seed(0)
    online = tiny_online()
    target = TargetNetwork(online)
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    loss, z = byol_loss(online, target, x1, x2)
    assert z.shape == (8, 16) and 0 <= loss.item() <= 8
    loss.backward()
    assert all(p.grad is None for p in target.parameters())
    assert online.predictor[0].weight.grad is not None
    online.eval(), target.eval()                 # BN in eval mode: swap views -> same loss
    a, _ = byol_loss(online, target, x1, x2)
    b, _ = byol_loss(online, target, x2, x1)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_simsiam_variant_without_target():
    loss, _ = byol_loss(tiny_online(), None, torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16))
    loss.backward()
    assert math.isfinite(loss.item())


def test_ema_update_moves_target_by_one_minus_tau():
    torch.manual_seed(0)
    online = tiny_online()
    target = TargetNetwork(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    before = target.projector[0].weight.clone()
    target.update(online, tau=0.9)
    expected = 0.9 * before + 0.1 * online.projector[0].weight
    assert torch.allclose(target.projector[0].weight, expected, atol=1e-6)
    online.encoder.bn1.running_mean.fill_(3.0)
    target.update(online, tau=0.99)
    assert torch.equal(target.encoder.bn1.running_mean, online.encoder.bn1.running_mean)


def test_collapse_indicator():
    assert collapse_indicator(torch.ones(64, 32)) == pytest.approx(0.0, abs=1e-6)
    assert 0.8 < collapse_indicator(torch.randn(4096, 32)) < 1.2


def test_schedules():
    assert learning_rate_at(0, 100, 10, 1.0, "cosine") == pytest.approx(0.1)
    assert learning_rate_at(9, 100, 10, 1.0, "cosine") == pytest.approx(1.0)
    assert learning_rate_at(55, 100, 10, 1.0, "cosine") == pytest.approx(0.5)
    assert learning_rate_at(100, 100, 10, 1.0, "cosine") == pytest.approx(0.0)
    assert learning_rate_at(70, 100, 0, 0.3, "constant") == 0.3
    assert ema_rate_at(0, 100, 0.996, "cosine") == pytest.approx(0.996)
    assert ema_rate_at(50, 100, 0.996, "cosine") == pytest.approx(0.998)
    assert ema_rate_at(100, 100, 0.996, "cosine") == pytest.approx(1.0)
    assert ema_rate_at(70, 100, 0.99, "constant") == 0.99


def test_bias_and_norm_excluded_from_decay():
    groups = parameter_groups([tiny_online()], 1e-4, exclude_bias_and_norm=True)
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_exclude"]
    assert all(p.ndim == 1 for p in groups[1]["params"]) and all(p.ndim > 1 for p in groups[0]["params"])
    assert len(parameter_groups([tiny_online()], 1e-4, exclude_bias_and_norm=False)) == 1


@pytest.mark.parametrize("name", ["sgd", "lars", "adam"])
def test_the_predictor_steps_at_its_own_learning_rate(name):
    net = tiny_online()
    predictor = {id(p) for p in net.predictor.parameters()}
    opt = build_optimizer(OptimizerConfig(name=name, predictor_lr_scale=10.0), [net], global_batch=64)
    set_learning_rate(opt, 0.05)
    by_lr = {}
    for group in opt.param_groups:
        by_lr.setdefault(group["lr"], set()).update(id(p) for p in group["params"])
    assert by_lr == {0.05: {id(p) for p in net.parameters()} - predictor, 0.05 * 10.0: predictor}
    # the decay and LARS exclusion of biases and norm parameters still hold inside the predictor's groups
    assert [(g["weight_decay"] > 0, g.get("lr_scale", 1.0)) for g in opt.param_groups] == [
        (True, 1.0), (False, 1.0), (True, 10.0), (False, 10.0)]
    plain = build_optimizer(OptimizerConfig(name=name), [tiny_online()], global_batch=64)
    assert len(plain.param_groups) == 2                 # scale 1: the groups (and old checkpoints) as before


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("lars", LARS), ("adam", torch.optim.Adam)])
def test_build_optimizer_and_linear_scaling(name, cls):
    cfg = OptimizerConfig(name=name, lr_scaling="linear")
    opt = build_optimizer(cfg, [tiny_online()], global_batch=512)
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == pytest.approx(0.06)


def test_lars_trust_ratio_step():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))          # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([dict(params=[w], weight_decay=0.0, lars_exclude=False),
                dict(params=[b], weight_decay=0.0, lars_exclude=True)], lr=1.0, momentum=0.0, eta=0.1)
    w.grad, b.grad = torch.tensor([0.0, 10.0]), torch.tensor([0.5])   # ||g|| = 10
    opt.step()
    assert torch.allclose(w.data, torch.tensor([3.0, 4.0 - 0.1 * 5 / 10 * 10]))
    assert torch.allclose(b.data, torch.tensor([0.5]))             # excluded: plain SGD


def test_atomic_save_and_safe_load(tmp_path):
    path = atomic_save({"a": torch.arange(3), "step": 5}, tmp_path / "c.pt")
    assert load_file(path)["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]          # no temp file left behind


def test_truncated_and_foreign_checkpoints_are_clear_errors(tmp_path):
    good = atomic_save({"w": torch.randn(100)}, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.pt' is truncated or not a PyTorch file"):
        load_file(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_file(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a byol training checkpoint"):
        load_training_checkpoint(good)
    with pytest.raises(CheckpointError, match="neither a byol checkpoint nor a"):
        encoder_state_from({"w": torch.zeros(1)})


class Boom:
    def __reduce__(self):
        return (open, ("/tmp/byol-pwned", "w"))   # would create a file if ever unpickled


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    import os
    path = tmp_path / "evil.pt"
    torch.save({"state": Boom()}, path)
    if os.path.exists("/tmp/byol-pwned"):
        os.remove("/tmp/byol-pwned")
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_file(path)
    assert not os.path.exists("/tmp/byol-pwned")


def test_torchvision_state_dict_is_recognised():
    state = torchvision.models.resnet34().state_dict()
    enc, meta = encoder_state_from(state)
    assert meta == {"network": "resnet34", "small_stem": False}
    assert not any(k.startswith("fc.") for k in enc)
    _, meta50 = encoder_state_from(build_encoder("resnet50", small_stem=True).state_dict())
    assert meta50 == {"network": "resnet50", "small_stem": True}
