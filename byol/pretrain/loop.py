"""The BYOL pretraining loop: a prepared run (setup.py) stepped from its start step to the end.

    uint8 batch [B,3,H,W] -> device -> two augmented views [B,3,S,S] (per-sample, on the device)
    -> online(both views) / target(both views) -> symmetric loss -> SGD/LARS/Adam step -> EMA

Exact resumption: the data order is a pure function of (seed, epoch), augmentation randomness of
(seed, step, rank), and the LR/EMA schedules of the step, so `--resume` from step k replays the
same batches and views an uninterrupted run would have seen.

Host syncs: a step never waits for the device. Its loss goes into a device buffer (`LossWindow`);
every `trainer.log_every` steps, and before every checkpoint, one all-reduce brings those losses
and every rank's stop request to the host, with rank 0's time-budget decision (budget.py: a new
total, applied by every rank at that step; while it estimates, host syncs also come at steps 2, 4,
8, ...). There a non-finite loss stops training (naming the step where it first appeared) before
any checkpoint could hold it, and a SIGINT/SIGTERM/SIGUSR1 that reached any rank stops every rank
at that same step, after writing a checkpoint. A stop therefore takes effect up to log_every steps
after the signal.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from byol.base import distributed as dist_utils
from byol.base.durations import describe
from byol.base.errors import Interrupted, TrainingError
from byol.base.stopping import StopSignals, iterate, signal_name
from byol.config import Config, save_config
from byol.pretrain import budget as time_budget
from byol.pretrain.checkpoint import write_encoder_files
from byol.pretrain.model import byol_loss, collapse_indicator
from byol.pretrain.monitor import knn_top1
from byol.pretrain.optim import ema_rate_at, learning_rate_at, set_learning_rate
from byol.pretrain.setup import Run, prepare_run

__all__ = ["train", "ranks_agree"]

log = logging.getLogger("byol")


def train(cfg: Config, resume: str | Path | None = None) -> dict:
    """Pretrain (or resume) as `cfg` says. Returns a summary dict; writes RUN_DIR/{config.yaml,
    metrics.jsonl, checkpoints/last.pt, encoder.pt}. Raises Interrupted after a stop signal."""
    started = time_budget.clock()      # a time budget counts from here: set-up, checkpoints, kNN passes
    ctx = dist_utils.setup(cfg.trainer.device)
    try:
        with StopSignals() as stop:
            run = prepare_run(cfg, ctx, Path(resume) if resume else None, started)
            try:
                return run_steps(run, stop)
            finally:
                run.metrics.close()
    finally:
        dist_utils.teardown()


def run_steps(run: Run, stop: StopSignals) -> dict:
    t, spe, ctx = run.cfg.trainer, run.steps_per_epoch, run.ctx
    step, losses = run.start_step, LossWindow(t.log_every, ctx.device, extra=len(run.budget.message()))
    log.info("training %s on %s (%d images), %s%d steps of %d x %d, %s, %s", run.cfg.network.name,
             run.cfg.data.name, run.n_images, "up to " if run.budget.estimating else "", run.schedule.total,
             t.batch_size, ctx.world_size, ctx.device, run.precision)
    t_start, last_knn = time.perf_counter(), None
    if run.knn_sets is not None and step == 0:     # the starting weights' score: the line the curve must climb past
        last_knn = monitor_knn(run, step, 0)
    while step < run.schedule.total:      # the total may change at a host sync (time budget: budget.py)
        epoch, skip = divmod(step, spe)
        run.start_epoch(epoch, skip)
        bar = tqdm(total=spe, initial=skip, desc=f"epoch {epoch + 1}",
                   disable=not (ctx.is_main and t.progress), dynamic_ncols=True, leave=False)
        t_row, n_row = time.perf_counter(), 0
        for images, labels in iterate(run.loader):
            lr, tau, z = train_step(run, images, step, losses)
            step += 1
            n_row += labels.shape[0] * ctx.world_size
            bar.update(1)
            row_due = step % t.log_every == 0 or step == run.schedule.total
            if not (row_due or step % t.checkpoint_interval == 0 or step % spe == 0 or run.budget.sync_due(step)):
                continue                                    # no sync: the device runs ahead
            stop_signum = losses.sync(step, stop.signum, run)   # may set a new total (time budget)
            if row_due or step >= run.schedule.total:
                now = time.perf_counter()
                loss = losses.row_mean()
                run.metrics.write({"step": step, "epoch": step / spe, "loss": loss, "lr": lr, "tau": tau,
                                   "img_per_s": n_row / (now - t_row), "collapse_std": collapse_indicator(z),
                                   "elapsed_s": now - t_start})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.4g}", tau=f"{tau:.4f}",
                                img_s=f"{n_row / (now - t_row):.1f}", **run.budget.postfix(step, run.schedule.total))
                t_row, n_row = now, 0
            if stop_signum:
                bar.close()
                path = run.save(step)
                raise Interrupted(f"interrupted at step {step} ({signal_name(stop_signum)}); checkpoint "
                                  f"written to {path}. Continue with: python main.py --resume {run.run_dir}",
                                  stop_signum, step, path)
            if step % t.checkpoint_interval == 0:
                run.save(step)
            if step >= run.schedule.total:
                break
        bar.close()
        done = step >= run.schedule.total
        if step % spe == 0 or done:     # epoch end
            if done or t.epoch_checkpoints:
                run.save(step)
            epoch_done = math.ceil(step / spe)
            if run.knn_sets is not None and (epoch_done % t.knn_every == 0 or done):
                last_knn = monitor_knn(run, step, epoch_done)
    return finish(run, step, losses.last, last_knn, t_start)


def monitor_knn(run: Run, step: int, epoch: int) -> float:
    """The online kNN monitor's top-1 (%) at this step, logged and written to metrics.jsonl (epoch 0: the
    starting weights, before the first step)."""
    with run.budget.timing("knn"):      # counts against a time budget, not as step time
        top1 = knn_top1(run.online.encoder, *run.knn_sets, run.image_size, run.ctx.device,
                        k=run.cfg.trainer.knn_k, autocast=run.autocast)
    run.metrics.write({"step": step, "epoch": epoch, "knn_top1": top1})
    log.info("epoch %d: kNN top-1 %.2f%%%s", epoch, top1, " (starting weights)" if step == 0 else "")
    return top1


def train_step(run: Run, images, step: int, losses: "LossWindow"):
    """One optimisation step on a batch (uint8 images [B, 3, H, W], or a dict of uint8 crops cut in
    the workers), queued on the device without waiting for it. Returns (lr, tau, projections z [2B, P])."""
    t = run.cfg.trainer
    if isinstance(images, dict):
        images = {k: v.to(run.ctx.device, non_blocking=True) for k, v in images.items()}
    else:
        images = images.to(run.ctx.device, non_blocking=True)
    gen = torch.Generator().manual_seed((t.seed * 1_000_003 + step) * 4096 + run.ctx.rank)
    (view1, view2), local = run.augment.views(images, gen)
    view1, view2 = (v.contiguous(memory_format=run.memory_format) for v in (view1, view2))
    if local is not None:
        local = local.contiguous(memory_format=run.memory_format)
    s = run.schedule
    lr = learning_rate_at(step, s.total, s.warmup, s.base_lr, s.lr_schedule, s.start, s.lr_start)
    tau = ema_rate_at(step, s.total, s.base_tau, s.m_schedule, s.start, s.ema_start)
    set_learning_rate(run.optimizer, lr)
    with run.autocast:
        loss, z = byol_loss(run.model, run.target, view1, view2, local)
    losses.add(loss, step)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()       # scale/step/update pass straight through unless fp16
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.target is not None:
        run.target.update(run.online, tau)
    return lr, tau, z


class LossWindow:
    """Step losses held on the device between syncs (at most `capacity` of them), then on the host."""

    def __init__(self, capacity: int, device: torch.device, extra: int = 0):
        self.values = torch.zeros(capacity + 1 + extra, device=device)   # [losses ..., stop request, budget]
        self.n, self.first_step = 0, 0
        self.since_row: list[float] = []                        # synced losses not yet in a metrics row
        self.last = float("nan")

    def add(self, loss: torch.Tensor, step: int) -> None:
        if self.n == 0:
            self.first_step = step
        self.values[self.n] = loss.detach()                     # a device copy: no sync
        self.n += 1

    def sync(self, step: int, signum: int, run: Run) -> int:
        """The one host sync: rank-mean losses since the last sync, any rank's stop request and
        rank 0's time-budget decision (applied here, by every rank at this step). Returns the stop
        signal agreed by all ranks (0 = go on); raises TrainingError if a loss was not finite (on
        every rank alike: the mean carries it)."""
        n, message = self.n, run.budget.message()
        self.values[n] = float(signum)
        for i, value in enumerate(message):                        # device fills: no host wait here
            self.values[n + 1 + i] = value
        shared = dist_utils.all_reduce_mean(self.values[:n + 1 + len(message)]).tolist()
        losses, requested = shared[:n], shared[n] > 0
        self.n = 0
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None:
            at = self.first_step + bad
            raise TrainingError(
                f"loss became {losses[bad]} at step {at} (epoch {at // run.steps_per_epoch + 1}; seen at "
                f"the check after step {step}, made every trainer.log_every steps); stopped. The last good "
                f"checkpoint {run.checkpoint} is kept. Lower optimizer.params.lr, add "
                f"optimizer.warmup_epochs, or use trainer.precision=fp32, then --resume {run.run_dir}")
        self.since_row += losses
        self.last = losses[-1] if losses else self.last
        follow_budget(run, step, [v * run.ctx.world_size for v in shared[n + 1:]])   # sums: rank 0's values
        if not requested:
            return 0
        if run.ctx.distributed:   # which signal: the same on every rank, so all exit alike
            return int(dist_utils.all_reduce_max(torch.tensor([signum], device=run.ctx.device)).item())
        return signum

    def row_mean(self) -> float:
        """Mean loss over the steps since the previous metrics row."""
        mean = sum(self.since_row) / max(1, len(self.since_row))
        self.since_row = []
        return mean


def follow_budget(run: Run, step: int, received: list[float]) -> None:
    """Apply rank 0's time-budget decision received at this host sync (every rank, the same step);
    a final total goes into the run's config (config.yaml and later checkpoints) as max_steps."""
    run.schedule, final = run.budget.at_sync(step, received, run.schedule)
    if final:
        run.cfg = replace(run.cfg, trainer=replace(run.cfg.trainer, max_steps=run.schedule.total))
        if run.ctx.is_main:
            save_config(run.cfg, run.run_dir / "config.yaml")


def ranks_agree(online: torch.nn.Module) -> bool:
    """DDP sanity check: every rank holds the same online weights (compares a checksum)."""
    import torch.distributed as dist
    checksum = torch.stack([p.detach().double().sum() for p in online.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    return all(torch.allclose(g, gathered[0], rtol=1e-9, atol=0) for g in gathered)


def finish(run: Run, step: int, final_loss: float, knn: float | None, t_start: float) -> dict:
    """Export encoder.pt (rank 0) and return the run's summary."""
    in_sync = ranks_agree(run.online) if run.ctx.distributed else True
    encoder_path = run.run_dir / "encoder.pt"
    if run.ctx.is_main:
        write_encoder_files(run.cfg, run.online, step, encoder_path)
    summary = {"run_dir": str(run.run_dir), "steps": step, "images": run.n_images, "final_loss": final_loss,
               "checkpoint": str(run.checkpoint), "encoder": str(encoder_path),
               "precision": run.precision, "device": str(run.ctx.device), "world_size": run.ctx.world_size,
               "ranks_in_sync": in_sync, "seconds": round(time.perf_counter() - t_start, 2)}
    if knn is not None:
        summary["knn_top1"] = knn
    if run.budget.active:
        left = run.budget.deadline - time_budget.clock()
        summary["time_budget"] = {"max_time": run.budget.label, "seconds": run.budget.seconds,
                                  "steps": run.schedule.total, "left_s": round(left, 2)}
        log.info("time budget %s: finished %d steps %s %s the budget's end", run.budget.label, step,
                 describe(abs(left)), "before" if left >= 0 else "after")
    return summary
