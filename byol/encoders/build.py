"""Building encoders: a network by name without its classifier (byol.encoders.families), its
feature dimension, and a ResNet's architecture read back from a state dict's shapes. The state dict
keeps the library's key names, so `encoder.pt` loads into `torchvision.models.resnet18()` (fc aside).
"""
from __future__ import annotations

import torch.nn as nn

from byol.base.errors import CheckpointError
from byol.encoders.families import build_classifier_model, feature_dim, strip_classifier, use_small_stem

# The pooled width of the ResNets this project started with (known without a dummy forward).
FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def build_encoder(name: str, small_stem: bool = False, kwargs: dict | None = None) -> nn.Module:
    """The network `name` (random weights) without its classifier: images [N,3,H,W] -> features [N, D].

    `small_stem` (ResNets only) swaps the 7x7/stride-2 conv + max-pool for a 3x3/stride-1 conv (as in
    SimCLR's CIFAR setup), which keeps spatial resolution for 32-64 px inputs. Such an encoder has a
    differently shaped `conv1.weight`; rebuild it with this function to load it.
    """
    net = strip_classifier(build_classifier_model(name, kwargs), name) if not name.startswith("timm:") \
        else build_classifier_model(name, kwargs)          # timm: built with num_classes=0 already
    return use_small_stem(net, name) if small_stem else net


def encoder_dim(encoder: nn.Module, name: str, image_size: int) -> int:
    """D of `encoder`'s features at image_size (a dummy forward, which also rejects a size it cannot take)."""
    if name in FEATURE_DIMS:                 # adaptive pooling: the same D at every input size
        return FEATURE_DIMS[name]
    return feature_dim(encoder, image_size, name)


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
