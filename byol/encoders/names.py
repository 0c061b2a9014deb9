"""Which family a network name belongs to, read from the name alone (no torch, no torchvision), so
the config schema can check names and choose the small stem without importing either.

torchvision's ResNet family (ResNet, ResNeXt, Wide ResNet) is the only one the small stem applies
to, and the one whose architecture `byol.encoders.build.infer_resnet` reads back from a state dict.

`check_network_name` is the one check of `network.name`: the config schema runs it when a config
loads (an unknown network fails then, not minutes later), and the encoder builder runs it on names
read from encoder files.
"""
from __future__ import annotations

import re

from byol.base.errors import ConfigError

RESNET_NAMES = re.compile(r"^(resnet\d+|resnext\d+_\w+|wide_resnet\d+_\d+)$")


def is_resnet_name(name: str) -> bool:
    return bool(RESNET_NAMES.match(name))


def check_network_name(name: str) -> None:
    """ConfigError unless `name` is a torchvision classification builder, a torchvision model class
    (built with network.kwargs) or timm:NAME (timm checks its own names when it builds them). The
    default ResNets are known without importing torchvision, so a config load stays cheap."""
    if is_resnet_name(name) or name.startswith("timm:"):
        return
    import torch.nn as nn
    import torchvision.models as models
    known = name in models.list_models(module=models)
    cls = getattr(models, name, None)
    if not (known or (isinstance(cls, type) and issubclass(cls, nn.Module))):
        raise ConfigError(f"config key 'network.name': unknown network {name!r}; use a torchvision classification "
                          f"builder (resnet18, convnext_tiny, efficientnet_b0, mobilenet_v3_small, vit_b_16, swin_t, "
                          f"...: torchvision.models.list_models()), a torchvision model class with network.kwargs "
                          f"(e.g. VisionTransformer), or timm:NAME")
