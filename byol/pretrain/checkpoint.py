"""The training-checkpoint format: what `last.pt` and `encoder.pt` hold, written atomically.

A training checkpoint (`last.pt`) is a plain dict of tensors and primitives:

    format: "byol-checkpoint", version: 1, step, epoch, step_in_epoch, small_stem,
    online: OnlineNetwork state dict (encoder.* / projector.* / predictor.*),
    target: TargetNetwork state dict or None (use_momentum=false),
    optimizer: optimizer state dict, scaler: GradScaler state dict or None,
    rng: {"torch": ByteTensor, "cuda": [ByteTensor, ...]},
    config: resolved config dict, versions: {"torch": ..., "torchvision": ..., "byol": ...}

`encoder.pt` holds {"format": "byol-encoder", "state_dict": torchvision-named backbone weights,
"network": name, "small_stem": bool, "feature_dim": int, "step": int, "config": dict, ...}.
Reading goes through `byol.encoders.files.load_file` (`torch.load(..., weights_only=True)`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from byol import __version__
from byol.atomic import atomic_path
from byol.config import Config, ConfigError, load_config, small_stem_for, to_dict
from byol.encoders.build import FEATURE_DIMS
from byol.encoders.files import load_file
from byol.errors import CheckpointError


def library_versions() -> dict:
    return {"byol": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


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


def make_checkpoint(cfg, online, target, optimizer, scaler, step, steps_per_epoch) -> dict:
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
        "config": to_dict(cfg), "versions": library_versions(),
    }


def export_encoder(cfg: Config, online: OnlineNetwork, step: int, path: Path) -> Path:
    """encoder.pt: the backbone alone, in torchvision key names (loads into resnetXX(), fc aside)."""
    return atomic_save({
        "format": "byol-encoder", "state_dict": online.encoder.state_dict(),
        "network": cfg.network.name, "small_stem": small_stem_for(cfg),
        "feature_dim": FEATURE_DIMS[cfg.network.name], "image_size": cfg.data_transforms.input_shape[0],
        "step": step, "config": to_dict(cfg), "versions": library_versions()}, path)


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
