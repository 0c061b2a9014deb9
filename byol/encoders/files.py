"""Reading any encoder checkpoint safely: `torch.load(..., weights_only=True)` with clear errors,
and the backbone in torchvision's key names from every layout this project reads:

    byol-encoder     encoder.pt written by training (byol.pretrain.checkpoint)
    byol-checkpoint  a training checkpoint (checkpoints/last.pt): the online encoder
    torchvision      a plain ResNet state dict
    foreign          byol-pytorch, sthalles/PyTorch-BYOL, solo-learn, mmpretrain (byol.encoders.foreign)

No pickle code ever runs unless the user passes trust=True (`--trust-checkpoint`).
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from byol.encoders.build import infer_resnet
from byol.encoders.foreign import convert_foreign
from byol.errors import CheckpointError


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
        state, meta = convert_foreign(obj, path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "network" not in meta:
        meta.update(infer_resnet(state, path))
    return state, meta


