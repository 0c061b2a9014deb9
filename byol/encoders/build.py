"""Building encoders: a torchvision ResNet without its classifier, and its architecture read back
from a state dict's shapes. Its state dict uses torchvision's key names, so `encoder.pt` loads
into `torchvision.models.resnet18()` (fc aside).
"""
from __future__ import annotations

import torch.nn as nn
import torchvision

from byol.errors import CheckpointError


FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def build_encoder(name: str, small_stem: bool = False) -> nn.Module:
    """torchvision ResNet without its classifier: images [N,3,H,W] -> features [N, FEATURE_DIMS[name]].

    `small_stem` swaps the 7x7/stride-2 conv + max-pool for a 3x3/stride-1 conv (as in SimCLR's
    CIFAR setup), which keeps spatial resolution for 32-64 px inputs. Such an encoder has a
    differently shaped `conv1.weight`; rebuild it with this function to load it.
    """
    if name not in FEATURE_DIMS:
        raise ValueError(f"unknown network.name {name!r}; choose one of {', '.join(FEATURE_DIMS)}")
    net = getattr(torchvision.models, name)(weights=None)
    if small_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def infer_resnet(state: dict, path="<dict>") -> dict:
    """Architecture of a torchvision-named ResNet state dict, from its tensor shapes."""
    n_blocks = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4)]
    bottleneck = "layer1.0.conv3.weight" in state
    names = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
             (True, (3, 4, 6, 3)): "resnet50"}
    name = names.get((bottleneck, tuple(n_blocks)))
    if name is None:
        raise CheckpointError(f"checkpoint '{path}': unsupported ResNet layout {n_blocks} "
                              f"(bottleneck={bottleneck}); supported: resnet18, resnet34, resnet50")
    return {"network": name, "small_stem": tuple(state["conv1.weight"].shape[-2:]) == (3, 3)}
