"""The stronger control: the starting weights with batch-norm statistics measured on the training images.

`encoder-start.pt` is the encoder before its first step, scored in eval mode with its batch-norm
running statistics at their initial values (mean 0, variance 1): every BN layer then passes its
input through unnormalised, and a deep random network's activations drift in scale from layer to
layer. Random weights whose BN statistics were measured on the data (a no-gradient pass in train
mode; "precise BN", Wu & Johnson 2021) are the usual, often stronger, random-features control. The
verdict (byol/report/verdict.py) compares BYOL with whichever of the two scores better on validation.

`write_start_bn_encoder` writes RUN_DIR/encoder-start-bn.pt beside encoder-start.pt: the same
weights, BN statistics averaged over up to BN_IMAGES training images (seeded sample), each through
the evaluation transform at the view size, exactly as extraction will feed them.
"""
from __future__ import annotations

import copy
import types
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from byol.base.stopping import ignore_stop_signals
from byol.data.augment import eval_transform

START_BN_ENCODER_FILE = "encoder-start-bn.pt"    # in RUN_DIR
BN_IMAGES = 4096          # enough for stable means and variances (32 batches of 128); a few seconds on a CPU


@torch.no_grad()
def with_measured_bn(encoder: nn.Module, dataset, image_size: int, device: torch.device,
                     max_images: int = BN_IMAGES, seed: int = 0, batch_size: int = 128,
                     num_workers: int = 0) -> nn.Module | None:
    """A copy of `encoder` whose BN running statistics are the average over (up to) `max_images` images
    of `dataset` (items: uint8 [3, S, S], label); None when the encoder has no batch norm."""
    net = copy.deepcopy(encoder)       # the caller's encoder keeps its statistics
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return None
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                      # a cumulative average over the batches, not an EMA
    n = len(dataset)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
    net.train()
    loader = DataLoader(Subset(dataset, pick.tolist()), batch_size=batch_size, drop_last=len(pick) > batch_size,
                        num_workers=num_workers, worker_init_fn=ignore_stop_signals)
    for images, _ in loader:
        net(eval_transform(images.to(device), image_size))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return net.eval()


def write_start_bn_encoder(cfg, online, dataset, image_size: int, device: torch.device, run_dir: Path,
                           write_files) -> Path | None:
    """RUN_DIR/encoder-start-bn.pt (+ .safetensors, .json) through `write_files` (checkpoint.write_encoder_files),
    from the online network before its first step; None when its encoder has no batch norm.

    The pass runs on a plain copy of the encoder (rebuilt from the config, the online weights loaded):
    under torchrun the online network holds SyncBatchNorm, whose train-mode forward would wait for
    the other ranks, and only rank 0 writes this file."""
    from byol.config import small_stem_for
    from byol.encoders.build import build_encoder
    plain = build_encoder(cfg.network.name, small_stem_for(cfg), cfg.network.kwargs).to(device)
    plain.load_state_dict(online.encoder.state_dict())
    measured = with_measured_bn(plain, dataset, image_size, device, seed=cfg.trainer.seed,
                                num_workers=cfg.trainer.num_workers)
    if measured is None:
        return None
    view = types.SimpleNamespace(encoder=measured, projector=online.projector)   # what write_encoder_files reads
    return write_files(cfg, view, 0, run_dir / START_BN_ENCODER_FILE)
