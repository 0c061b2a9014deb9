"""Which family a network name belongs to, read from the name alone (no torch, no torchvision), so
the config schema can check names and choose the small stem without importing either.

torchvision's ResNet family (ResNet, ResNeXt, Wide ResNet) is the only one the small stem applies
to, and the one whose architecture `byol.encoders.build.infer_resnet` reads back from a state dict.
"""
from __future__ import annotations

import re

RESNET_NAMES = re.compile(r"^(resnet\d+|resnext\d+_\w+|wide_resnet\d+_\d+)$")


def is_resnet_name(name: str) -> bool:
    return bool(RESNET_NAMES.match(name))
