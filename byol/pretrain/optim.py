"""Optimisers and schedules: SGD, LARS (You et al. 2017) and Adam; warmup + cosine learning rate;
the cosine EMA schedule of BYOL (Sec. 3.2).

Following the paper (Appendix C.1), biases and batch-norm parameters are excluded from weight
decay and from the LARS trust-ratio adaptation when `optimizer.exclude_bias_and_norm` is true.
Schedules are pure functions of the step, so a resumed run recomputes them exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from byol.config import Optimizer as OptimizerConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-tensor step is scaled by eta * ||w|| / ||g + wd w||.

    Param groups with `lars_exclude=True` get plain SGD+momentum (no adaptation, no decay).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def parameter_groups(modules: list[nn.Module], weight_decay: float, exclude_bias_and_norm: bool,
                     predictor_lr_scale: float = 1.0):
    """[decayed weights, excluded biases/norm params]; the second group has no decay and no LARS.
    predictor_lr_scale != 1: the predictor's parameters (names starting `predictor.`) form their own
    groups whose LR is the schedule's times that factor (`lr_scale`, read by set_learning_rate):
    DirectPred (Tian et al. 2021) and SimSiam (Chen & He 2021, Sec. 4.2) find BYOL's predictor
    gains from a faster step than the encoder's."""
    split = predictor_lr_scale != 1.0
    buckets: dict[tuple[bool, bool], list] = {}     # (predictor?, excluded?) -> params
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                key = (split and name.startswith("predictor."), exclude_bias_and_norm and p.ndim <= 1)
                buckets.setdefault(key, []).append(p)
    groups = []
    for is_predictor in (False, True):
        for excluded in (False, True):
            params = buckets.get((is_predictor, excluded))
            if params or (not is_predictor and not excluded):
                group = dict(params=params or [], weight_decay=0.0 if excluded else weight_decay,
                             lars_exclude=excluded)
                if is_predictor:
                    group["lr_scale"] = predictor_lr_scale
                groups.append(group)
    return groups


def base_learning_rate(cfg: OptimizerConfig, global_batch: int) -> float:
    """lr, or lr * global_batch / 256 with lr_scaling=linear (paper: 0.2 x B/256 for LARS)."""
    lr = cfg.params.lr
    return lr * global_batch / 256 if cfg.lr_scaling == "linear" else lr


def build_optimizer(cfg: OptimizerConfig, modules: list[nn.Module], global_batch: int):
    lr = base_learning_rate(cfg, global_batch)
    groups = parameter_groups(modules, cfg.params.weight_decay, cfg.exclude_bias_and_norm, cfg.predictor_lr_scale)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.params.momentum, eta=cfg.lars_eta)
    for g in groups:      # torch's own optimisers don't know the LARS flag
        g.pop("lars_exclude")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.params.momentum)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"unknown optimizer.name {cfg.name!r}")


def progress_at(step: int, total_steps: int, start: int = 0, start_progress: float = 0.0) -> float:
    """Schedule progress in [0, 1]: `start_progress` at step `start`, linear to 1 at `total_steps`.
    A plain run has start 0 and start_progress 0 (step / total); a run whose total changed at step
    `start` (a time budget's correction, byol/pretrain/budget.py) keeps the progress it had there."""
    return min(1.0, start_progress + (1.0 - start_progress) * ((step - start) / max(1, total_steps - start)))


def learning_rate_at(step: int, total_steps: int, warmup_steps: int, base_lr: float,
                     schedule: str, start: int = 0, start_progress: float = 0.0) -> float:
    """Linear warmup from 0, then cosine decay to 0 (paper Sec. 3.3) or constant. The cosine's
    progress runs from the end of warmup, or from (`start`, `start_progress`) when start is later."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if start <= warmup_steps:
        start, start_progress = warmup_steps, 0.0
    progress = progress_at(step, total_steps, start, start_progress)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


AUTO_TAU_C, AUTO_TAU_RANGE = 3.0, (0.9, 0.996)


def base_ema_rate(m: float | str, total_steps: int) -> float:
    """trainer.m, or for m=auto: tau_base = 1 - 3 / sqrt(K) for a run of K steps, within [0.9, 0.996].
    The rule reproduces the published presets from their step counts (ImageNet at batch 4096:
    1000 epochs = 312k steps -> 0.995, paper 0.996; 300 epochs = 94k -> 0.990, paper 0.99; 40 epochs
    = 12.5k -> 0.973, DeepMind's 0.97), and moves the target faster in short runs (1,000 steps ->
    0.905). Measured on CIFAR-10 at 160 steps (auto = 0.9 there) it was no better than 0.99 (the
    learning check in docs/measurements/learning.md), so config.yaml and the short-budget recipe keep fixed values."""
    if m != "auto":
        return float(m)
    lo, hi = AUTO_TAU_RANGE
    return min(hi, max(lo, 1.0 - AUTO_TAU_C / math.sqrt(max(1, total_steps))))


def ema_rate_at(step: int, total_steps: int, base_tau: float, schedule: str, start: int = 0,
                start_progress: float = 0.0) -> float:
    """tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2 (Sec. 3.2), or constant tau_base; k / K is
    `progress_at` (from (start, start_progress) after a change of the total)."""
    if schedule == "constant":
        return base_tau
    progress = progress_at(step, total_steps, start, start_progress)
    return 1.0 - (1.0 - base_tau) * (math.cos(math.pi * progress) + 1) / 2


@dataclass(frozen=True)
class Schedule:
    """A run's LR and EMA schedules, pure functions of the step (so `--resume` recomputes them).

    A plain run: warmup, then the cosines over `total` steps (start 0). A time-budgeted run may
    change its total while it runs (byol/pretrain/budget.py): `rebased(step, total)` keeps the LR's
    and tau's progress at that step and spreads the rest over the new remaining steps, so neither
    curve jumps (only its slope changes). `state()` goes into checkpoints to continue it exactly.
    """
    total: int
    warmup: int
    base_lr: float
    m: float | str                      # trainer.m: a number, or auto (from the total)
    lr_schedule: str = "cosine"
    m_schedule: str = "cosine"
    start: int = 0                      # the step of the last change of the total (0: none)
    lr_start: float = 0.0               # the LR cosine's progress there (0 while still in warmup)
    ema_start: float = 0.0              # the EMA schedule's progress there

    @property
    def base_tau(self) -> float:
        return base_ema_rate(self.m, self.total)

    def lr(self, step: int) -> float:
        return learning_rate_at(step, self.total, self.warmup, self.base_lr, self.lr_schedule, self.start,
                                self.lr_start)

    def tau(self, step: int) -> float:
        return ema_rate_at(step, self.total, self.base_tau, self.m_schedule, self.start, self.ema_start)

    def rebased(self, step: int, total: int) -> "Schedule":
        """The same schedules ending at `total` instead, continuous at `step`."""
        if total == self.total:
            return self
        lr_start = 0.0
        if step > self.warmup:
            start, p0 = (self.start, self.lr_start) if self.start > self.warmup else (self.warmup, 0.0)
            lr_start = progress_at(step, self.total, start, p0)
        return replace(self, total=total, start=step, lr_start=lr_start,
                       ema_start=progress_at(step, self.total, self.start, self.ema_start))

    def state(self) -> dict:
        return {"total": self.total, "start": self.start, "lr_start": self.lr_start, "ema_start": self.ema_start}

    def restored(self, state: dict) -> "Schedule":
        """This schedule (settings from the config) at the total and anchor a checkpoint saved."""
        return replace(self, total=int(state["total"]), start=int(state["start"]),
                       lr_start=float(state["lr_start"]), ema_start=float(state["ema_start"]))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's LR on every group, times the group's `lr_scale` (the predictor's, if any)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
