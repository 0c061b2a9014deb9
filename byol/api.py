"""BYOL around any image network, from Python: the same model, views and loss as `byol train`.

    import torch, torchvision
    from byol import BYOL

    net = torchvision.models.convnext_tiny()              # any nn.Module: torchvision, timm, your own
    learner = BYOL(net, image_size=96)                   # layer="avgpool" or a node name for an inner layer
    opt = torch.optim.AdamW(learner.parameters(), lr=3e-4)
    for images in loader:                                # uint8 [N,3,H,W], or float in [0, 1]
        loss = learner(images)                           # Table 6 views drawn per sample, on images' device
        opt.zero_grad(); loss.backward(); opt.step()
        learner.update_target()                          # EMA: xi <- tau xi + (1 - tau) theta (Sec. 3.1)
    features = learner.embed(images)                     # eval-mode encoder features [N, D]
    torch.save(net.state_dict(), "improved-net.pt")      # `net` itself was trained (classifier aside)

The representation: with `layer=None` the classifier is removed IN PLACE by the rule of
`byol.encoders.families` (a Linear `fc`/`classifier`/`heads`/`head` becomes Identity, a Sequential one
keeps what precedes its last Linear); a network without one is used as it is. With `layer="avgpool"`
(or any torchvision.models.feature_extraction node name) that node's output is the representation
(torchvision's `create_feature_extractor`, which shares the network's parameters); a feature map
[N, C, H, W] is average-pooled to [N, C]. `use_momentum=False` gives SimSiam, as in the CLI.
The full trainer (data, schedules, checkpoints, resume, DDP) is `byol.pretrain.train(config)`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from byol.base.errors import ConfigError
from byol.data.augment import BYOLViews, eval_transform
from byol.encoders.families import feature_dim, strip_classifier
from byol.pretrain.model import OnlineNetwork, TargetNetwork, byol_loss


class NodeOutput(nn.Module):
    """One node of a network as [N, D] features (torchvision's create_feature_extractor)."""

    def __init__(self, net: nn.Module, layer: str):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
        try:
            self.body = create_feature_extractor(net, return_nodes={layer: "features"})
        except (ValueError, KeyError, RuntimeError) as e:
            train_nodes, _ = get_graph_node_names(net)
            raise ValueError(f"layer {layer!r} is not a node of {type(net).__name__} ({e}); nodes: "
                             f"{', '.join(train_nodes[-8:])} ...") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)["features"]
        if out.ndim == 4:            # a feature map: global average pool
            out = F.adaptive_avg_pool2d(out, 1)
        return out.flatten(1)


def representation(net: nn.Module, layer: str | None = None) -> nn.Module:
    """The encoder BYOL trains: `net` without its classifier, or the named node of `net`."""
    if layer is not None:
        return NodeOutput(net, layer)
    try:
        return strip_classifier(net, type(net).__name__)
    except ConfigError:          # no classifier to remove: the network's output is the representation
        return net


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] as is; float in [0, 1] -> uint8 (the views are cut from uint8, as in training)."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
    return images.detach().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


class BYOL(nn.Module):
    """Online network (encoder + projector + predictor), EMA target and the paper's two views."""

    def __init__(self, net: nn.Module, image_size: int, layer: str | None = None, *,
                 projection_size: int = 256, projection_hidden_size: int = 4096,
                 predictor_hidden_size: int | None = None, use_momentum: bool = True, tau: float = 0.99,
                 s: float = 1.0, min_scale: float = 0.08):
        super().__init__()
        encoder = representation(net, layer)
        self.feature_dim = feature_dim(encoder, image_size, type(net).__name__)
        self.online = OnlineNetwork(encoder, self.feature_dim, projection_hidden_size, projection_size,
                                    predictor_hidden_size or projection_hidden_size)
        self.target = TargetNetwork(self.online) if use_momentum else None
        self.views = BYOLViews(image_size, s=s, min_scale=min_scale)
        self.image_size, self.tau = int(image_size), float(tau)

    @property
    def encoder(self) -> nn.Module:
        return self.online.encoder

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images [N, 3, H, W] (uint8, or float in [0, 1]) -> the symmetric BYOL loss (Eq. 4), a scalar."""
        view1, view2 = self.views(as_uint8(images), generator)
        loss, _ = byol_loss(self.online, self.target, view1, view2)
        return loss

    @torch.no_grad()
    def update_target(self, tau: float | None = None) -> None:
        """One EMA step of the target towards the online network (no-op for SimSiam)."""
        if self.target is not None:
            self.target.update(self.online, self.tau if tau is None else float(tau))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Eval-mode encoder features [N, D] (resized/centre-cropped to image_size, ImageNet-normalised)."""
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            return self.encoder(eval_transform(as_uint8(images), self.image_size))
        finally:
            self.encoder.train(was_training)
