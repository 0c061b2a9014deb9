"""Everything a pretraining run needs before its first step: `prepare_run(cfg, ctx, resume) -> Run`.

Built once, in this order: dataset and resumable sampler -> DataLoader (workers ignore stop
signals, byol/base/stopping.py) -> online/target networks (SyncBatchNorm under DDP, channels_last) ->
optimizer, gradient scaler (a no-op unless fp16) and the autocast context -> the resumed state
(weights, optimizer, scaler, torch RNG, step) -> DDP wrapper, batched augmentation, metrics log
and the kNN monitor's datasets -> the LR/EMA schedule and the time budget (trainer.max_time:
budget.py; a resumed run takes both from its checkpoint). The loop (loop.py) then only steps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from byol.base import distributed as dist_utils
from byol.base.atomic import stale_temp_files
from byol.base.errors import ConfigError
from byol.config import Config, save_config, small_stem_for
from byol.data import build_dataset, build_training_dataset
from byol.data.augment import BYOLViews
from byol.encoders.build import build_encoder, encoder_dim
from byol.encoders.files import load_encoder
from byol.pretrain.checkpoint import (START_ENCODER_FILE, atomic_save, write_encoder_files, find_pretrained,
                                      load_training_checkpoint, make_checkpoint)
from byol.base.stopping import ignore_stop_signals
from byol.pretrain.budget import Budget, resolve as resolve_budget
from byol.pretrain.metrics import MetricsLog
from byol.pretrain.model import OnlineNetwork, TargetNetwork
from byol.pretrain.optim import Schedule, build_optimizer
from byol.pretrain.small_input_conv import use_small_input_path
from byol.pretrain.start_bn import write_start_bn_encoder

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
    use_small_input_path(encoder)     # exact; much faster backward where a view shrinks to 1x1 (32 px, standard stem)
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
    schedule: Schedule                  # LR and EMA schedules; its total may change under a time budget
    budget: Budget                      # trainer.max_time (seconds 0: none)
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

    @property
    def total_steps(self) -> int:
        return self.schedule.total

    def start_epoch(self, epoch: int, skip_batches: int) -> None:
        """Before the epoch's loader iterator exists: data order and (folders) crop randomness."""
        self.sampler.set_epoch(epoch, skip_batches=skip_batches)
        if hasattr(self.loader.dataset, "set_epoch"):
            self.loader.dataset.set_epoch(epoch)

    def save(self, step: int) -> Path:
        """Write `checkpoint` atomically (rank 0); every rank waits until it is on disk."""
        with self.budget.timing("checkpoint"):
            if self.ctx.is_main:
                scaler = self.scaler if self.scaler.is_enabled() else None   # None: the format's "no scaler"
                atomic_save(make_checkpoint(self.cfg, self.online, self.target, self.optimizer, scaler, step,
                                            self.steps_per_epoch, self.budget.state(self.schedule)), self.checkpoint)
            dist_utils.barrier()
        return self.checkpoint


def prepare_run(cfg: Config, ctx: dist_utils.Context, resume: Path | None, started: float = 0.0) -> Run:
    """`started`: the time budget's clock when train() began."""
    t = cfg.trainer
    # a fresh run's trainer.max_time first, so a bad one (slurm outside a job) fails before the slow set-up
    resolved = resolve_budget(t, ask=ctx.is_main) if resume is None else None
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
    if cfg.network.small_stem is None and small_stem_for(cfg) and device.type == "cpu" and ctx.is_main:
        log.info("network.small_stem: auto chose the small stem for %d px views, which runs ~14x slower than the "
                 "standard stem on a CPU; configs/short_cpu.yaml sets network.small_stem=false (docs/measurements/learning.md: How long "
                 "on a CPU?)", size)
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
    step, saved_budget = restore(checkpoint, resume is not None, ctx, online, target, optimizer, scaler, total_steps)
    model = DistributedDataParallel(online, device_ids=[device] if device.type == "cuda" else None) \
        if ctx.distributed else online
    tf = cfg.data_transforms
    augment = BYOLViews(size, s=tf.s, min_scale=tf.min_scale, blur=tf.blur, local_crops=tf.local_crops,
                        local_size=tf.local_size, local_scale=tf.local_scale).to(device)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        write_start_encoder(cfg, online, step, run_dir)
    metrics = MetricsLog(run_dir, ctx.is_main, t.tensorboard, resumed_step=step)
    knn_sets = None
    if t.knn_every > 0 and ctx.is_main:
        knn_sets = (build_dataset(cfg.data, size, cfg.data.knn_train_split),
                    build_dataset(cfg.data, size, cfg.data.eval_split))
    schedule = Schedule(total_steps, round(cfg.optimizer.warmup_epochs * steps_per_epoch), base_lr, t.m,
                        cfg.optimizer.lr_schedule, t.m_schedule)
    time_budget, schedule = plan_budget(cfg, ctx, schedule, step, saved_budget, started, resolved, steps_per_epoch,
                                        sum(len(s) for s in knn_sets) if knn_sets else 0)
    return Run(cfg=cfg, ctx=ctx, run_dir=run_dir, checkpoint=checkpoint, precision=precision,
               n_images=len(dataset), image_size=size, sampler=sampler, loader=loader,
               steps_per_epoch=steps_per_epoch, schedule=schedule, budget=time_budget, online=online,
               target=target, model=model,
               optimizer=optimizer, scaler=scaler, autocast=autocast, memory_format=memory_format,
               augment=augment, metrics=metrics, knn_sets=knn_sets, start_step=step)


def write_start_encoder(cfg: Config, online: OnlineNetwork, step: int, run_dir: Path) -> None:
    """RUN_DIR/encoder-start.pt: the encoder as it is before the first step, the report's control.
    Written by a run that starts at step 0 (fresh, or resumed before its first checkpoint); a run
    resumed later keeps the file of its first start (its weights are no longer the start's)."""
    path = run_dir / START_ENCODER_FILE
    if step == 0:
        write_encoder_files(cfg, online, 0, path)
        size = cfg.data_transforms.input_shape[0]      # the stronger control: BN statistics measured (start_bn.py)
        write_start_bn_encoder(cfg, online, build_dataset(cfg.data, size), size,
                               next(online.parameters()).device, run_dir, write_encoder_files)
    elif not path.is_file():
        log.info("%s has no %s (trained before byol wrote one): reports will say the starting-weights "
                 "control is missing", run_dir, START_ENCODER_FILE)


def plan_budget(cfg: Config, ctx: dist_utils.Context, schedule: Schedule, step: int, saved: dict | None,
                started: float, resolved: tuple[float, str] | None, steps_per_epoch: int,
                knn_images: int) -> tuple[Budget, Schedule]:
    """The run's time budget and the schedule it starts on. Fresh: trainer.max_time's seconds, the
    schedule over the upper bound until rank 0 has measured. Resumed: the checkpoint's budget and
    schedule (never measured again; a total overridden on the command line is rebased at `step`)."""
    t = cfg.trainer
    if saved is None and not resolved:
        resolved = resolve_budget(t, ask=ctx.is_main)
    seconds, label = (saved["seconds"], saved["label"]) if saved else resolved
    if not seconds:
        return Budget(), schedule
    upper = schedule.total
    if saved:
        schedule = schedule.restored(saved["schedule"])
        # only a max_steps given for this start changes the total (e.g. --resume RUN trainer.max_steps=N); an
        # upper bound from max_epochs does not (a config without the saved max_steps, as train(cfg, resume=RUN))
        if not saved["estimating"] and t.max_steps and upper != schedule.total:
            log.info("time budget %s: trainer.max_steps=%d given on --resume replaces the chosen %d steps",
                     label, upper, schedule.total)
            schedule = schedule.rebased(step, upper)
    budget = Budget(seconds, label, started=started, used=saved["used_s"] if saved else 0.0, upper=upper,
                    estimating=saved["estimating"] if saved else True, first_step=step, is_main=ctx.is_main,
                    steps_per_epoch=steps_per_epoch, checkpoint_interval=t.checkpoint_interval,
                    epoch_checkpoints=t.epoch_checkpoints,
                    knn_every=t.knn_every, knn_images=knn_images, batch_size=t.batch_size,
                    global_batch=t.batch_size * ctx.world_size)
    if ctx.is_main:
        budget.log_start(step, schedule.total, resumed=saved is not None)
    return budget, schedule


def restore(checkpoint: Path, resuming: bool, ctx: dist_utils.Context, online, target, optimizer, scaler,
            total_steps: int) -> tuple[int, dict | None]:
    """Load `checkpoint` into the networks, optimizer, scaler and torch RNG; returns its step (0
    when not resuming, or when the run stopped before writing its first checkpoint) and its time
    budget entry (None: none)."""
    if not resuming:
        return 0, None
    if ctx.is_main:   # a checkpoint or encoder write (RUN_DIR/encoder*.pt ...) cut short by a kill
        for stale in [*stale_temp_files(checkpoint.parent), *stale_temp_files(checkpoint.parent.parent)]:
            log.info("removing %s, left by an interrupted write", stale)
            stale.unlink(missing_ok=True)
    if not checkpoint.exists():
        log.info("%s has no checkpoint yet (stopped before the first one): starting it from step 0",
                 checkpoint.parent.parent)
        return 0, None
    state = load_training_checkpoint(checkpoint)
    online.load_state_dict(state["online"])
    if target is not None:
        target.load_state_dict(state["target"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    log.info("resumed %s at step %d of %d", checkpoint, state["step"], total_steps)
    return state["step"], state.get("budget")
