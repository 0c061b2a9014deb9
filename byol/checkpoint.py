"""Checkpoint files: atomic writes, safe reads, and the encoder in torchvision's key names.

A training checkpoint (`last.pt`, `step-N.pt`) is a plain dict of tensors and primitives:

    format: "byol-checkpoint", version: 1, step, epoch, step_in_epoch,
    online: OnlineNetwork state dict (encoder.* / projector.* / predictor.*),
    target: TargetNetwork state dict or None (use_momentum=false),
    optimizer: optimizer state dict, scaler: GradScaler state dict or None,
    rng: {"torch": ByteTensor, "cuda": [ByteTensor, ...]},
    config: resolved config dict, versions: {"torch": ..., "torchvision": ..., "byol": ...}

`encoder.pt` holds {"format": "byol-encoder", "state_dict": torchvision-named backbone weights,
"network": name, "small_stem": bool, "feature_dim": int, "step": int, "config": dict, ...}.
Everything is read with `torch.load(..., weights_only=True)`: no pickle code ever runs.
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch
import torchvision

from byol.atomic import atomic_path
from byol.errors import CheckpointError

__version__ = "0.1.0"


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


def load_file(path: str | Path, trust: bool = False) -> dict:
    """torch.load with weights_only=True (unless the user passed trust=True), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found; pass the path of a .pt file "
                              f"(e.g. RUN_DIR/checkpoints/last.pt or RUN_DIR/encoder.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if not _starts_like_a_pickle(path):     # text, HTML, an image ...: torch calls it an "operand"
            raise _not_pytorch(path, e) from None
        raise CheckpointError(
            f"checkpoint '{path}' needs arbitrary code to unpickle and was refused "
            f"({_first_line(e)}). Only load it if you trust its author: pass "
            f"--trust-checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise _not_pytorch(path, e) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(obj).__name__}, not a state dict")
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _starts_like_a_pickle(path: Path) -> bool:
    """torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (0x80, protocol 2-5)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _not_pytorch(path: Path, e: BaseException) -> CheckpointError:
    what = "is empty" if path.stat().st_size == 0 else "is truncated or not a PyTorch file"
    return CheckpointError(f"checkpoint '{path}' {what} ({type(e).__name__}: {_first_line(e)}); "
                           f"use another checkpoint (RUN_DIR/checkpoints/ keeps earlier ones)")


def load_training_checkpoint(path: str | Path) -> dict:
    ckpt = load_file(path)
    if ckpt.get("format") != "byol-checkpoint":
        raise CheckpointError(f"'{path}' is not a byol training checkpoint (no format=byol-checkpoint); "
                              f"--resume needs RUN_DIR/checkpoints/last.pt written by main.py")
    return ckpt


def sha256_of(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def strip_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def encoder_state_from(obj: dict, path: str | Path = "<dict>") -> tuple[dict, dict]:
    """(torchvision-named backbone state dict, metadata) from any checkpoint this project writes,
    or from a plain torchvision ResNet state dict. `fc.*` keys are dropped."""
    fmt = obj.get("format")
    if fmt == "byol-encoder":
        state, meta = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    elif fmt == "byol-checkpoint":
        state = strip_prefix(obj["online"], "encoder.")
        cfg = obj["config"]["network"]
        meta = {"network": cfg["name"], "small_stem": bool(obj.get("small_stem", False)),
                "step": obj["step"], "config": obj["config"]}
    elif "conv1.weight" in obj and "layer1.0.conv1.weight" in obj:
        state, meta = obj, {}
    else:   # byol-pytorch, sthalles/PyTorch-BYOL, solo-learn, mmpretrain: converted by name
        from byol.checkpoint_import import convert_foreign
        state, meta = convert_foreign(obj, path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "network" not in meta:
        meta.update(infer_resnet(state, path))
    return state, meta


def infer_resnet(state: dict, path="<dict>") -> dict:
    """Architecture of a torchvision-named ResNet state dict, from its tensor shapes."""
    n_blocks = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4)]
    bottleneck = "layer1.0.conv3.weight" in state
    names = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
             (True, (3, 4, 6, 3)): "resnet50"}
    name = names.get((bottleneck, tuple(n_blocks)))
    if name is None:
        raise CheckpointError(f"checkpoint '{path}': unsupported ResNet layout {n_blocks} "
                              f"(bottleneck={bottleneck}); supported: resnet18, resnet34, resnet50")
    return {"network": name, "small_stem": tuple(state["conv1.weight"].shape[-2:]) == (3, 3)}
