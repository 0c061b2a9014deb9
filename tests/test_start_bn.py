"""The stronger control (byol/pretrain/start_bn.py): the starting weights with batch-norm statistics
measured on the training images, written by training beside encoder-start.pt."""
import json

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from byol.data.augment import eval_transform
from byol.pretrain.start_bn import with_measured_bn


def test_measured_statistics_are_the_images_own():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    dataset = TensorDataset(images, torch.zeros(64, dtype=torch.long))
    measured = with_measured_bn(net, dataset, 8, torch.device("cpu"), max_images=64, batch_size=16)
    with torch.no_grad():
        conv_out = net[0](eval_transform(images, 8))                 # [64, 4, 6, 6], what BN saw
    bn = measured[1]
    torch.testing.assert_close(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    per_batch = torch.stack([conv_out[i:i + 16].var(dim=(0, 2, 3)) for i in range(0, 64, 16)])
    torch.testing.assert_close(bn.running_var, per_batch.mean(0), rtol=1e-3, atol=1e-4)   # the batches' mean
    assert not measured.training and bn.momentum == 0.1                          # eval mode, momentum restored
    assert torch.equal(net[1].running_mean, torch.zeros(4)) and net.training      # the caller's net untouched
    assert torch.equal(measured[0].weight, net[0].weight)                          # weights unchanged
    assert with_measured_bn(nn.Sequential(nn.Conv2d(3, 4, 3)), dataset, 8, torch.device("cpu")) is None


def test_training_writes_the_measured_control_beside_the_start(trained_run):
    from byol.encoders.files import load_encoder
    start, meta = load_encoder(trained_run / "encoder-start.pt")
    measured, measured_meta = load_encoder(trained_run / "encoder-start-bn.pt")
    assert measured_meta["step"] == 0 and json.loads((trained_run / "encoder-start-bn.json").read_text())["step"] == 0
    for key, value in start.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert not torch.equal(measured[key], value), key       # measured on the images, not the initial 0 / 1
        else:
            assert torch.equal(measured[key], value), key           # the same weights
