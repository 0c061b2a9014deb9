"""The BYOL networks (Grill et al. 2020, Sec. 3.1): online encoder + projector + predictor, and an
EMA target (encoder + projector) that receives no gradients.

The encoder is any network mapping images to features [N, D] (byol.encoders.build: a torchvision or
timm model without its classifier), so its state dict keeps the library's key names and `encoder.pt`
loads into e.g. `torchvision.models.resnet18()` (fc aside).
The target is deliberately *not* a submodule of `OnlineNetwork`: under DDP only the online
network is wrapped (the target is updated by EMA, identically on every rank, and never
all-reduced).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F



def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU-Linear: the projector and predictor of the paper (Sec. 3.3)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class OnlineNetwork(nn.Module):
    """encoder -> projector -> predictor. forward: views [N,3,H,W] -> (projections z, predictions p)."""

    def __init__(self, encoder: nn.Module, feature_dim: int, hidden: int, proj_dim: int, pred_hidden: int):
        super().__init__()
        self.encoder = encoder                       # images [N,3,H,W] -> features [N, feature_dim]
        self.projector = mlp(feature_dim, hidden, proj_dim)
        self.predictor = mlp(proj_dim, pred_hidden or hidden, proj_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.encoder(x))
        return z, self.predictor(z)


class TargetNetwork(nn.Module):
    """EMA copy of the online encoder + projector (Sec. 3.1: xi <- tau xi + (1 - tau) theta)."""

    def __init__(self, online: OnlineNetwork):
        super().__init__()
        self.encoder = copy.deepcopy(online.encoder)
        self.projector = copy.deepcopy(online.projector)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))

    @torch.no_grad()
    def update(self, online: OnlineNetwork, tau: float) -> None:
        """EMA step. Buffers (BN running statistics) are copied, as in the official implementation."""
        mine = list(self.encoder.parameters()) + list(self.projector.parameters())
        theirs = list(online.encoder.parameters()) + list(online.projector.parameters())
        torch._foreach_lerp_(mine, theirs, 1.0 - tau)
        for b_t, b_o in zip(self._buffers_of(self), self._buffers_of(online)):
            b_t.copy_(b_o)

    @staticmethod
    def _buffers_of(net: nn.Module):
        return list(net.encoder.buffers()) + list(net.projector.buffers())


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z) per sample (Eq. 2), computed in float32 whatever the autocast dtype."""
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.float(), dim=-1)
    return 2.0 - 2.0 * (p * z).sum(dim=-1)


def byol_loss(online: nn.Module, target: nn.Module | None, view1: torch.Tensor,
              view2: torch.Tensor, local: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetrised BYOL loss (Eq. 4) over both view orders, averaged over the batch.

    Both views go through each network as one batch of 2N (one forward instead of two).
    `target=None` is the SimSiam variant: the online projections, detached, are the targets.
    `local` [K*N, 3, s, s] (multi-crop, crop-major rows): the online predictions of these small
    views regress onto both global targets too (SwAV/DINO: local views never go through the
    target); the loss is then 2 x the mean over all (prediction, other view's target) pairs, which
    is exactly Eq. 4 when K = 0.
    Returns (loss scalar, online projections z [2N, D] for monitoring).
    """
    n = view1.shape[0]
    both = torch.cat([view1, view2])
    z, p = online(both)
    with torch.no_grad():
        t = (target(both) if target is not None else z).detach()
    p1, p2 = p[:n], p[n:]
    t1, t2 = t[:n], t[n:]
    pairs = regression_loss(p1, t2) + regression_loss(p2, t1)            # [N]
    n_pairs = 2
    if local is not None and local.shape[0]:
        _, p_local = online(local)
        p_local = p_local.view(-1, n, p_local.shape[-1])                 # [K, N, P]
        pairs = pairs + (regression_loss(p_local, t1) + regression_loss(p_local, t2)).sum(dim=0)
        n_pairs += 2 * p_local.shape[0]
    loss = pairs.mean() * (2.0 / n_pairs)
    return loss, z.detach()


def collapse_indicator(z: torch.Tensor) -> float:
    """Std of l2-normalised projections across the batch, times sqrt(D) (SimSiam, Sec. 4.1).

    About 1.0 for well-spread unit vectors, 0.0 when all outputs collapse to one point.
    """
    z = F.normalize(z.float(), dim=-1)
    return float(z.std(dim=0).mean() * z.shape[1] ** 0.5)
