"""Any image network as an encoder: torchvision classification models by builder name, timm models
as `timm:NAME`, with the classifier removed by one rule per family.

    torchvision.models.list_models(module=torchvision.models)    the 80 builder names this accepts
    network.name=convnext_tiny | efficientnet_b0 | mobilenet_v3_small | vit_b_16 | swin_t | regnet_y_400mf ...
    network.name=VisionTransformer network.kwargs={image_size: 32, patch_size: 8, ...}   a model class + kwargs
    network.name=timm:resnet18d                                   timm's models (pip install "byol[timm]")

Classifier rule, read off torchvision's model classes: the classifier is the `fc`, `classifier`,
`heads` or `head` attribute. A single Linear becomes Identity (ResNet, RegNet, ShuffleNet, DenseNet,
GoogLeNet, Inception, Swin). A Sequential keeps what stands before its last Linear, less trailing
Dropout: ConvNeXt keeps its LayerNorm2d + Flatten, MaxViT its pool + LayerNorm, MobileNetV3 its
hidden Linear + Hardswish (the 1024/1280-d head features timm also returns), VGG/AlexNet their 4096-d
hidden layers; EfficientNet, MobileNetV2, MNASNet and ViT end at the pooled/class-token features.
SqueezeNet (a convolutional classifier) is refused. timm models are built with num_classes=0,
timm's own way to return pooled features. The feature dimension is found by a dummy forward at the
configured image size, which is also how an input size the network cannot take is caught.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torchvision

from byol.base.errors import ConfigError
from byol.encoders.names import check_network_name, is_resnet_name

CLASSIFIER_ATTRS = ("fc", "classifier", "heads", "head")
# Builders whose defaults return auxiliary outputs in train mode; an encoder needs one tensor.
BUILDER_DEFAULTS = {"googlenet": {"aux_logits": False, "init_weights": False},
                    "inception_v3": {"aux_logits": False, "init_weights": False}}


def torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def build_classifier_model(name: str, kwargs: dict | None = None) -> nn.Module:
    """The whole network `name` names (random weights), classifier included."""
    kwargs = dict(kwargs or {})
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise ConfigError(f"config key 'network.name': {name!r} needs timm: pip install 'byol[timm]' "
                              f"(or pip install timm)") from None
        try:
            return timm.create_model(name[len("timm:"):], pretrained=False, num_classes=0, **kwargs)
        except RuntimeError as e:   # timm: "Unknown model (...)"
            raise ConfigError(f"config key 'network.name': {name!r}: {first_line(e)}; "
                              f"see timm.list_models()") from None
    check_network_name(name)           # names read from encoder files never passed the config schema
    if name in torchvision_names():
        builder, kwargs = torchvision.models.get_model_builder(name), {**BUILDER_DEFAULTS.get(name, {}), **kwargs}
        kwargs.setdefault("weights", None)
    else:                               # a model class, built with network.kwargs
        builder = getattr(torchvision.models, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # GoogLeNet/Inception init-weights notices
            return builder(**kwargs)
    except TypeError as e:
        raise ConfigError(f"config key 'network.kwargs': {name} does not take {kwargs} ({first_line(e)})") from None


def strip_classifier(net: nn.Module, name: str = "network") -> nn.Module:
    """Remove the classifier in place by the family rule above; returns `net`."""
    for attr in CLASSIFIER_ATTRS:
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return net
        if isinstance(head, nn.Sequential):
            layers = list(head.children())
            linear = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
            if not linear:
                break
            kept = layers[:linear[-1]]
            while kept and isinstance(kept[-1], nn.Dropout):
                kept.pop()
            setattr(net, attr, nn.Sequential(*kept) if kept else nn.Identity())
            return net
    raise ConfigError(f"config key 'network.name': no classifier rule for {name} (no Linear `fc`, `classifier`, "
                      f"`heads` or `head`); pass the network through the Python API as an encoder that "
                      f"returns features, or choose another family")


def use_small_stem(net: nn.Module, name: str) -> nn.Module:
    """3x3/stride-1 first conv and no max-pool (SimCLR's CIFAR stem): keeps resolution at 32-64 px."""
    if not (isinstance(net, torchvision.models.ResNet) and is_resnet_name(name)):
        raise ConfigError(f"config key 'network.small_stem': the small stem applies to torchvision ResNets "
                          f"(resnet*, resnext*, wide_resnet*), not {name}; set network.small_stem=false")
    net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


@torch.no_grad()
def feature_dim(encoder: nn.Module, image_size: int, name: str = "network") -> int:
    """D of the encoder's [N, D] output on image_size x image_size inputs (dummy forward, eval mode)."""
    was_training = encoder.training
    encoder.eval()
    try:
        out = encoder(torch.zeros(2, 3, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError, IndexError) as e:
        raise ConfigError(f"config key 'data_transforms.input_shape': {name} cannot take {image_size}x{image_size} "
                          f"images ({first_line(e)}); use a size it accepts (e.g. 224, or network.kwargs "
                          f"image_size for ViTs)") from None
    finally:
        encoder.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"config key 'network.name': {name} returns {shape}, not features [N, D]; "
                          f"choose the representation layer (Python API: layer=...)")
    return int(out.shape[1])


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
