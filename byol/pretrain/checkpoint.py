"""The training-checkpoint format: what `last.pt` and `encoder.pt` hold, written atomically.

A training checkpoint (`last.pt`) is a plain dict of tensors and primitives:

    format: "byol-checkpoint", version: 1, step, epoch, step_in_epoch, small_stem,
    online: OnlineNetwork state dict (encoder.* / projector.* / predictor.*),
    target: TargetNetwork state dict or None (use_momentum=false),
    optimizer: optimizer state dict, scaler: GradScaler state dict or None,
    rng: {"torch": ByteTensor, "cuda": [ByteTensor, ...]},
    config: resolved config dict, versions: {"torch": ..., "torchvision": ..., "byol": ...},
    budget (trainer.max_time runs only): {label, seconds, used_s, estimating,
            schedule: {total, start, lr_start, ema_start}}: the chosen total and the schedule's
            anchor (optim.Schedule), so --resume continues it without measuring again

The encoder alone is three files, written in this order by `write_encoder_files`:

    encoder.pt           a PLAIN state dict, torchvision key names, CPU tensors only:
                         `torchvision.models.resnet18().load_state_dict(sd, strict=False)` misses
                         only fc.* (a small-stem encoder fails on conv1.weight's shape: rebuild it
                         with `byol.encoders.build.build_encoder(name, small_stem=True)`)
    encoder.safetensors  the same tensors, readable without pickle (numpy, JAX, Rust, timm ...)
    encoder.json         network, small_stem, feature_dim, image_size, normalisation, step,
                         config, versions, and the SHA-256 of both weight files

`encoder-start.pt` (+ .safetensors, .json) is the same export of the encoder training started from
(step 0: the seeded random init, or the `network.fine_tune_from` weights): the control every
report scores beside the trained encoder, so it says what pretraining added. A resumed run keeps
the file of its first start.

Reading goes through `byol.encoders.files` (`load_encoder`, `torch.load(..., weights_only=True)`);
the wrapped encoder.pt written before the first release ({"format": "byol-encoder", "state_dict":
...}) is refused there with an error saying what to use instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import safetensors.torch

from byol.base.atomic import atomic_path, atomic_write_bytes, atomic_write_text, file_sha256
from byol.base.errors import CheckpointError, ConfigError
from byol.base.provenance import library_versions
from byol.config import Config, load_config, small_stem_for, to_dict
from byol.data.augment import IMAGENET_MEAN, IMAGENET_STD
from byol.encoders.files import ENCODER_FORMAT, load_file, metadata_path

if TYPE_CHECKING:   # model.py imports nothing from here, but the annotation needs no runtime import
    from byol.pretrain.model import OnlineNetwork


ENCODER_FILE, START_ENCODER_FILE = "encoder.pt", "encoder-start.pt"   # in RUN_DIR


def atomic_save(obj, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`.

    A crash (or a full disk) at any moment leaves either the old file or the new one, never a
    half-written file under the final name.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:   # torch reports a failed write as an opaque RuntimeError ...
            if isinstance(e.__context__, OSError):   # ... raised while handling the real OSError
                raise e.__context__ from None
            raise
    return Path(path)


def load_training_checkpoint(path: str | Path) -> dict:
    ckpt = load_file(path)
    if ckpt.get("format") != "byol-checkpoint":
        raise CheckpointError(f"'{path}' is not a byol training checkpoint (no format=byol-checkpoint); "
                              f"--resume needs RUN_DIR/checkpoints/last.pt written by main.py")
    return ckpt


def find_pretrained(name: str) -> Path:
    """network.fine_tune_from: a checkpoint file, a run directory, or a run name under runs/."""
    for base in (Path(name), Path("runs") / name):
        for candidate in (base, base / "encoder.pt", base / "checkpoints" / "last.pt"):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"config key 'network.fine_tune_from': no checkpoint at '{name}' (looked for the "
                      f"file, NAME/encoder.pt, NAME/checkpoints/last.pt, also under runs/); "
                      f"set network.fine_tune_from=null to train from scratch")


def make_checkpoint(cfg, online, target, optimizer, scaler, step, steps_per_epoch, budget: dict | None = None) -> dict:
    extra = {"budget": budget} if budget is not None else {}
    return {
        "format": "byol-checkpoint", "version": 1,
        "step": step, "epoch": step // steps_per_epoch, "step_in_epoch": step % steps_per_epoch,
        "small_stem": small_stem_for(cfg),
        "online": online.state_dict(),
        "target": target.state_dict() if target is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "config": to_dict(cfg), "versions": library_versions(), **extra,
    }


def write_encoder_files(cfg: Config, online: OnlineNetwork, step: int, path: Path) -> Path:
    """encoder.pt (plain torchvision-named state dict), encoder.safetensors, then encoder.json.

    The json comes last and records both files' SHA-256: an export cut short leaves weights whose
    digest no json matches, which readers refuse instead of pairing them with stale metadata.
    """
    path = Path(path)
    # CPU and contiguous: loads on a machine without a GPU, and safetensors refuses channels_last strides
    state = {k: v.detach().cpu().contiguous() for k, v in online.encoder.state_dict().items()}
    atomic_save(state, path)
    tensors_path = path.with_suffix(".safetensors")
    atomic_write_bytes(tensors_path, safetensors.torch.save(state, metadata={
        "format": ENCODER_FORMAT, "network": cfg.network.name, "small_stem": str(small_stem_for(cfg)).lower(),
        "step": str(step)}))
    weights = {p.suffix.lstrip("."): {"file": p.name, "sha256": file_sha256(p), "bytes": p.stat().st_size}
               for p in (path, tensors_path)}
    # Version 3 names the network once, in config.network (with its kwargs); small_stem is the resolved
    # value (the config may say None: decided by network and image size), so it is a fact of its own.
    meta = {"format": ENCODER_FORMAT, "version": 3, "small_stem": small_stem_for(cfg),
            "feature_dim": online.projector[0].in_features, "image_size": cfg.data_transforms.input_shape[0],
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                              "formula": "(pixel / 255 - mean) / std, RGB"},
            "step": step, "weights": weights, "config": to_dict(cfg), "versions": library_versions()}
    atomic_write_text(metadata_path(path), json.dumps(meta, indent=2) + "\n")
    return path


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config saved in RUN_DIR/checkpoints/last.pt, with `overrides` applied on top. A run that
    stopped before its first checkpoint is restarted from its RUN_DIR/config.yaml."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.is_file() and (Path(run_dir) / "config.yaml").is_file():
        return load_config(Path(run_dir) / "config.yaml", [f"trainer.run_dir={run_dir}", *(overrides or [])])
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no checkpoint at '{path}'; pass the run directory "
                          f"of an earlier run (its trainer.run_dir)")
    saved = load_training_checkpoint(path)["config"]
    return load_config(None, [f"trainer.run_dir={run_dir}", *(overrides or [])], base=saved)
