"""Everything a pretraining run needs before its first step: `prepare_run(cfg, ctx, resume) -> Run`.

Built once, in this order: dataset and resumable sampler -> DataLoader (workers ignore stop
signals, byol/stopping.py) -> online/target networks (SyncBatchNorm under DDP, channels_last) ->
optimizer, gradient scaler (a no-op unless fp16) and the autocast context -> the resumed state
(weights, optimizer, scaler, torch RNG, step) -> DDP wrapper, batched augmentation, metrics log
and the kNN monitor's datasets. The loop (loop.py) then only steps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from byol import distributed as dist_utils
from byol.config import Config, ConfigError, save_config, small_stem_for
from byol.data import build_dataset, build_training_dataset
from byol.data.augment import BYOLViews
from byol.encoders.build import build_encoder, encoder_dim
from byol.encoders.files import load_encoder
from byol.pretrain.checkpoint import atomic_save, find_pretrained, load_training_checkpoint, make_checkpoint
from byol.pretrain.metrics import MetricsLog
from byol.pretrain.model import OnlineNetwork, TargetNetwork
from byol.pretrain.optim import base_ema_rate, build_optimizer
from byol.stopping import ignore_stop_signals

log = logging.getLogger("byol")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    net, size = cfg.network, cfg.data_transforms.input_shape[0]
    encoder = build_encoder(net.name, small_stem_for(cfg), net.kwargs)
    online = OnlineNetwork(encoder, encoder_dim(encoder, net.name, size),
                           net.projection_head.mlp_hidden_size, net.projection_head.projection_size,
                           net.predictor_head.mlp_hidden_size)
    if net.fine_tune_from:
        path = find_pretrained(net.fine_tune_from)
        state, _ = load_encoder(path)
        missing, unexpected = online.encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"config key 'network.fine_tune_from': '{net.fine_tune_from}' does not fit "
                              f"{net.name} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    target = TargetNetwork(online) if cfg.trainer.use_momentum else None
    return online, target


@dataclass
class Run:
    """A prepared run. `model` is `online` under DDP when distributed; `start_step` is 0 or the
    resumed checkpoint's step. Views are [B, 3, S, S] with S = `image_size`."""
    cfg: Config
    ctx: dist_utils.Context
    run_dir: Path
    checkpoint: Path                    # RUN_DIR/checkpoints/last.pt
    precision: str                      # fp32 | bf16 | fp16
    n_images: int
    image_size: int
    sampler: dist_utils.ResumableSampler
    loader: DataLoader                  # (uint8 [B, 3, H, W] or a dict of crops: crops.py, labels)
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    base_lr: float
    base_tau: float                     # trainer.m, resolved (m=auto: from total_steps)
    online: OnlineNetwork
    target: TargetNetwork | None        # None: SimSiam (use_momentum=false)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler        # enabled for fp16 only; otherwise its calls pass through
    autocast: torch.autocast            # one context object, entered once per step
    memory_format: torch.memory_format
    augment: BYOLViews
    metrics: MetricsLog
    knn_sets: tuple | None              # (memory bank split, scored split) on rank 0 when knn_every > 0
    start_step: int

    def start_epoch(self, epoch: int, skip_batches: int) -> None:
        """Before the epoch's loader iterator exists: data order and (folders) crop randomness."""
        self.sampler.set_epoch(epoch, skip_batches=skip_batches)
        if hasattr(self.loader.dataset, "set_epoch"):
            self.loader.dataset.set_epoch(epoch)

    def save(self, step: int) -> Path:
        """Write `checkpoint` atomically (rank 0); every rank waits until it is on disk."""
        if self.ctx.is_main:
            scaler = self.scaler if self.scaler.is_enabled() else None   # None: the format's "no scaler"
            atomic_save(make_checkpoint(self.cfg, self.online, self.target, self.optimizer, scaler, step,
                                        self.steps_per_epoch), self.checkpoint)
        dist_utils.barrier()
        return self.checkpoint


def prepare_run(cfg: Config, ctx: dist_utils.Context, resume: Path | None) -> Run:
    t = cfg.trainer
    run_dir = resume if resume is not None else Path(t.run_dir)
    device, precision = ctx.device, resolve_precision(t.precision, ctx.device)
    size = cfg.data_transforms.input_shape[0]
    torch.manual_seed(t.seed)   # same initial weights on every rank

    dataset = build_training_dataset(cfg, t.seed)
    global_batch = t.batch_size * ctx.world_size
    if len(dataset) < global_batch:
        raise ConfigError(f"config key 'trainer.batch_size': the {cfg.data.name} split '{cfg.data.split}' "
                          f"has {len(dataset)} images, fewer than one global batch of {global_batch}; "
                          f"lower trainer.batch_size")
    sampler = dist_utils.ResumableSampler(len(dataset), ctx.rank, ctx.world_size, t.batch_size, t.seed)
    steps_per_epoch = sampler.batches_per_epoch()
    loader = DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                        num_workers=t.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False, worker_init_fn=ignore_stop_signals)

    online, target = build_networks(cfg)
    if ctx.distributed and device.type == "cuda":
        online = torch.nn.SyncBatchNorm.convert_sync_batchnorm(online)   # BN over the global batch
        target = TargetNetwork(online) if target is not None else None
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    online.to(device, memory_format=memory_format)
    if target is not None:
        target.to(device, memory_format=memory_format)
    optimizer = build_optimizer(cfg.optimizer, [online], global_batch)
    base_lr = optimizer.param_groups[0]["lr"]     # before a resumed state overwrites it with step k's
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = AUTOCAST_DTYPES.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    total_steps = t.max_steps or t.max_epochs * steps_per_epoch
    checkpoint = run_dir / "checkpoints" / "last.pt"
    step = restore(checkpoint, resume is not None, ctx, online, target, optimizer, scaler, total_steps)
    model = DistributedDataParallel(online, device_ids=[device] if device.type == "cuda" else None) \
        if ctx.distributed else online
    tf = cfg.data_transforms
    augment = BYOLViews(size, s=tf.s, min_scale=tf.min_scale, blur=tf.blur, local_crops=tf.local_crops,
                        local_size=tf.local_size, local_scale=tf.local_scale).to(device)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    metrics = MetricsLog(run_dir, ctx.is_main, t.tensorboard, resumed_step=step)
    knn_sets = None
    if t.knn_every > 0 and ctx.is_main:
        knn_sets = (build_dataset(cfg.data, size, cfg.data.knn_train_split),
                    build_dataset(cfg.data, size, cfg.data.eval_split))
    return Run(cfg=cfg, ctx=ctx, run_dir=run_dir, checkpoint=checkpoint, precision=precision,
               n_images=len(dataset), image_size=size, sampler=sampler, loader=loader,
               steps_per_epoch=steps_per_epoch, total_steps=total_steps,
               warmup_steps=round(cfg.optimizer.warmup_epochs * steps_per_epoch),
               base_lr=base_lr, base_tau=base_ema_rate(t.m, total_steps), online=online, target=target, model=model,
               optimizer=optimizer, scaler=scaler, autocast=autocast, memory_format=memory_format,
               augment=augment, metrics=metrics, knn_sets=knn_sets, start_step=step)


def restore(checkpoint: Path, resuming: bool, ctx: dist_utils.Context, online, target, optimizer, scaler,
            total_steps: int) -> int:
    """Load `checkpoint` into the networks, optimizer, scaler and torch RNG; returns its step (0
    when not resuming, or when the run stopped before writing its first checkpoint)."""
    if not resuming:
        return 0
    if ctx.is_main:
        for stale in checkpoint.parent.glob(".*.tmp-*"):    # a checkpoint write cut short by a kill
            log.info("removing %s, left by an interrupted checkpoint write", stale)
            stale.unlink(missing_ok=True)
    if not checkpoint.exists():
        log.info("%s has no checkpoint yet (stopped before the first one): starting it from step 0",
                 checkpoint.parent.parent)
        return 0
    state = load_training_checkpoint(checkpoint)
    online.load_state_dict(state["online"])
    if target is not None:
        target.load_state_dict(state["target"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    log.info("resumed %s at step %d of %d", checkpoint, state["step"], total_steps)
    return state["step"]
