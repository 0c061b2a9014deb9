"""The BYOL pretraining loop: one readable function from config to checkpoints.

    uint8 batch [B,3,H,W] -> device -> two augmented views [B,3,S,S] (per-sample, on the device)
    -> online(both views) / target(both views) -> symmetric loss -> SGD/LARS/Adam step -> EMA

Exact resumption: the data order is a pure function of (seed, epoch), augmentation randomness of
(seed, step, rank), and the LR/EMA schedules of the step, so `--resume` from step k replays the
same batches and views an uninterrupted run would have seen.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from byol import distributed as dist_utils
from byol.config import Config, ConfigError, save_config, small_stem_for
from byol.data import build_dataset
from byol.data.augment import BYOLViews
from byol.encoders.files import encoder_state_from, load_file
from byol.errors import Interrupted, TrainingError
from byol.pretrain.checkpoint import atomic_save, export_encoder, find_pretrained, load_training_checkpoint, make_checkpoint
from byol.pretrain.metrics import MetricsLog
from byol.pretrain.monitor import knn_top1
from byol.pretrain.model import OnlineNetwork, TargetNetwork, byol_loss, collapse_indicator
from byol.pretrain.optim import build_optimizer, ema_rate_at, learning_rate_at, set_learning_rate

log = logging.getLogger("byol")


def resolve_precision(preference: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware runs it natively (no scaler needed), else fp32/fp16."""
    if preference == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'trainer.precision': fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if preference != "auto":
        return preference
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if native_bf16 else "fp32"


def build_networks(cfg: Config) -> tuple[OnlineNetwork, TargetNetwork | None]:
    net = cfg.network
    online = OnlineNetwork(net.name, small_stem_for(cfg), net.projection_head.mlp_hidden_size,
                           net.projection_head.projection_size, net.predictor_head.mlp_hidden_size)
    if net.fine_tune_from:
        path = find_pretrained(net.fine_tune_from)
        state, _ = encoder_state_from(load_file(path), path)
        missing, unexpected = online.encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"config key 'network.fine_tune_from': '{net.fine_tune_from}' does not fit "
                              f"{net.name} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    target = TargetNetwork(online) if cfg.trainer.use_momentum else None
    return online, target


def ranks_agree(online: torch.nn.Module) -> bool:
    """DDP sanity check: every rank holds the same online weights (compares a checksum)."""
    import torch.distributed as dist
    checksum = torch.stack([p.detach().double().sum() for p in online.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    return all(torch.allclose(g, gathered[0], rtol=1e-9, atol=0) for g in gathered)


def train(cfg: Config, resume: str | Path | None = None) -> dict:
    """Pretrain (or resume) as `cfg` says. Returns a summary dict; writes RUN_DIR/{config.yaml,
    metrics.jsonl, checkpoints/last.pt, encoder.pt}."""
    ctx = dist_utils.setup(cfg.trainer.device)
    try:
        return _train(cfg, ctx, Path(resume) if resume else None)
    finally:
        dist_utils.teardown()


def _train(cfg: Config, ctx: dist_utils.Context, resume: Path | None) -> dict:
    t = cfg.trainer
    run_dir = resume if resume is not None else Path(t.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    device, precision = ctx.device, resolve_precision(t.precision, ctx.device)
    size = cfg.data_transforms.input_shape[0]
    torch.manual_seed(t.seed)   # same initial weights on every rank

    dataset = build_dataset(cfg.data, size)
    global_batch = t.batch_size * ctx.world_size
    if len(dataset) < global_batch:
        raise ConfigError(f"config key 'trainer.batch_size': the {cfg.data.name} split '{cfg.data.split}' "
                          f"has {len(dataset)} images, fewer than one global batch of {global_batch}; "
                          f"lower trainer.batch_size")
    sampler = dist_utils.ResumableSampler(len(dataset), ctx.rank, ctx.world_size, t.batch_size, t.seed)
    steps_per_epoch = sampler.batches_per_epoch()
    total_steps = t.max_steps or t.max_epochs * steps_per_epoch
    loader = DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                        num_workers=t.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)

    online, target = build_networks(cfg)
    if ctx.distributed and device.type == "cuda":
        online = torch.nn.SyncBatchNorm.convert_sync_batchnorm(online)   # BN over the global batch
        target = TargetNetwork(online) if target is not None else None
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    online.to(device, memory_format=memory_format)
    if target is not None:
        target.to(device, memory_format=memory_format)
    optimizer = build_optimizer(cfg.optimizer, [online], global_batch)
    base_lr = optimizer.param_groups[0]["lr"]
    warmup_steps = round(cfg.optimizer.warmup_epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    step = 0
    if resume is not None and ctx.is_main:
        for stale in ckpt_dir.glob(".*.tmp-*"):    # a checkpoint write cut short by a kill
            log.info("removing %s, left by an interrupted checkpoint write", stale)
            stale.unlink(missing_ok=True)
    if resume is not None and not (ckpt_dir / "last.pt").exists():
        log.info("%s has no checkpoint yet (stopped before the first one): starting it from step 0", run_dir)
    elif resume is not None:
        state = load_training_checkpoint(ckpt_dir / "last.pt")
        online.load_state_dict(state["online"])
        if target is not None:
            target.load_state_dict(state["target"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        step = state["step"]
        log.info("resumed %s at step %d of %d", ckpt_dir / "last.pt", step, total_steps)
    model = DistributedDataParallel(online, device_ids=[device] if device.type == "cuda" else None) \
        if ctx.distributed else online
    augment = BYOLViews(size, s=cfg.data_transforms.s, min_scale=cfg.data_transforms.min_scale).to(device)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    metrics = MetricsLog(run_dir, ctx.is_main, t.tensorboard, resumed_step=step)
    knn_sets = None
    if t.knn_every > 0 and ctx.is_main:
        knn_sets = (build_dataset(cfg.data, size, cfg.data.knn_train_split),
                    build_dataset(cfg.data, size, cfg.data.eval_split))

    def save(tag: str = "last") -> Path:
        path = ckpt_dir / f"{tag}.pt"
        if ctx.is_main:
            atomic_save(make_checkpoint(cfg, online, target, optimizer, scaler, step,
                                                steps_per_epoch), path)
        dist_utils.barrier()
        return path

    stop = {"signal": 0}
    previous = {}
    def on_signal(signum, frame):      # finish the step in flight, checkpoint, then stop
        stop["signal"] = signum
    for s in (signal.SIGINT, signal.SIGTERM):
        previous[s] = signal.signal(s, on_signal)

    log.info("training %s on %s (%d images), %d steps of %d x %d, %s, %s", cfg.network.name,
             cfg.data.name, len(dataset), total_steps, t.batch_size, ctx.world_size, device, precision)
    t_start, loss_value, last_knn = time.perf_counter(), float("nan"), None
    try:
        while step < total_steps:
            epoch, skip = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, skip_batches=skip)
            bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}",
                       disable=not (ctx.is_main and t.progress), dynamic_ncols=True, leave=False)
            t_log, n_log = time.perf_counter(), 0
            for images, _ in loader:
                images = images.to(device, non_blocking=True)
                gen = torch.Generator().manual_seed((t.seed * 1_000_003 + step) * 4096 + ctx.rank)
                view1, view2 = (v.contiguous(memory_format=memory_format) for v in augment(images, gen))
                lr = learning_rate_at(step, total_steps, warmup_steps, base_lr, cfg.optimizer.lr_schedule)
                tau = ema_rate_at(step, total_steps, t.m, t.m_schedule)
                set_learning_rate(optimizer, lr)
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    loss, z = byol_loss(model, target, view1, view2)
                # one all-reduce carries the mean loss and any rank's stop request
                shared = dist_utils.all_reduce_mean(torch.stack([loss.detach().float(),
                                                                 torch.tensor(float(stop["signal"]), device=device)]))
                loss_value, stop_requested = shared[0].item(), shared[1].item() > 0
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"loss became {loss_value} at step {step} (epoch {epoch + 1}); stopped. The last good "
                        f"checkpoint {ckpt_dir / 'last.pt'} is kept. Lower optimizer.params.lr, add "
                        f"optimizer.warmup_epochs, or use trainer.precision=fp32, then --resume {run_dir}")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                if target is not None:
                    target.update(online, tau)
                step += 1
                n_log += images.shape[0] * ctx.world_size
                bar.update(1)
                if step % t.log_every == 0 or step == total_steps:
                    now = time.perf_counter()
                    row = {"step": step, "epoch": step / steps_per_epoch,
                           "loss": loss_value, "lr": lr, "tau": tau, "img_per_s": n_log / (now - t_log),
                           "collapse_std": collapse_indicator(z), "elapsed_s": now - t_start}
                    metrics.write(row)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.4g}", tau=f"{tau:.4f}",
                                    img_s=f"{row['img_per_s']:.1f}")
                    t_log, n_log = now, 0
                if stop_requested:
                    bar.close()
                    raise Interrupted(step, save())
                if step % t.checkpoint_interval == 0:
                    save()
                if step >= total_steps:
                    break
            bar.close()
            if step % steps_per_epoch == 0 or step >= total_steps:     # epoch end
                save()
                epoch_done = math.ceil(step / steps_per_epoch)
                if knn_sets is not None and (epoch_done % t.knn_every == 0 or step >= total_steps):
                    last_knn = knn_top1(online.encoder, *knn_sets, size, device, k=t.knn_k,
                                        autocast_dtype=autocast_dtype)
                    metrics.write({"step": step, "epoch": epoch_done, "knn_top1": last_knn})
                    log.info("epoch %d: kNN top-1 %.2f%%", epoch_done, last_knn)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        metrics.close()

    in_sync = ranks_agree(online) if ctx.distributed else True
    encoder_path = run_dir / "encoder.pt"
    if ctx.is_main:
        export_encoder(cfg, online, step, encoder_path)
    summary = {"run_dir": str(run_dir), "steps": step, "final_loss": loss_value,
               "checkpoint": str(ckpt_dir / "last.pt"), "encoder": str(encoder_path),
               "precision": precision, "device": str(device), "world_size": ctx.world_size,
               "ranks_in_sync": in_sync,
               "seconds": round(time.perf_counter() - t_start, 2)}
    if last_knn is not None:
        summary["knn_top1"] = last_knn
    return summary
