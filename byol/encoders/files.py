"""Reading any encoder file safely: `torch.load(..., weights_only=True)` (or safetensors) with clear
errors, and the backbone in torchvision's key names from every layout this project reads:

    torchvision      encoder.pt written by training: a plain state dict (tensors only), with its
                     metadata in encoder.json beside it (see ENCODER_FORMAT below); also any plain
                     ResNet state dict, and encoder.safetensors (the same tensors)
    byol-checkpoint  a training checkpoint (checkpoints/last.pt): the online encoder
    foreign          byol-pytorch, sthalles/PyTorch-BYOL, solo-learn, mmpretrain (byol.encoders.foreign)

encoder.pt as training wrote it before the project's first release ({"format": "byol-encoder",
"state_dict": ...}) is refused with an error naming the file and what to use instead.

`load_encoder(path)` is the one way the commands (extract, latent vectors, export, fine_tune_from)
read an encoder. No pickle code ever runs unless the user passes trust=True (`--trust-checkpoint`).
"""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_tensors

from byol.base.atomic import file_sha256
from byol.base.errors import CheckpointError
from byol.encoders.build import infer_resnet
from byol.encoders.foreign import convert_foreign
from byol.encoders.names import is_resnet_name

# encoder.json: {"format": ENCODER_FORMAT, "version": 3, "small_stem", "feature_dim", "image_size",
# "normalisation": {"mean", "std"}, "step", "weights": {"pt": {"file", "sha256", "bytes"},
# "safetensors": {...}}, "config", "versions"}, written by byol.pretrain.checkpoint.write_encoder_files.
# The network is named once, in config["network"] (name and kwargs); version 2 also had a top-level
# "network" (the same name), still read.
ENCODER_FORMAT = "byol-encoder"
SAFETENSORS = ".safetensors"


def load_file(path: str | Path, trust: bool = False) -> dict:
    """torch.load with weights_only=True (unless the user passed trust=True), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found; pass the path of a .pt file "
                              f"(e.g. RUN_DIR/checkpoints/last.pt or RUN_DIR/encoder.pt)")
    if path.suffix == SAFETENSORS:
        return _load_safetensors(path)
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


def _load_safetensors(path: Path) -> dict:
    """A .safetensors file: tensors only, so nothing to trust (no pickle in the format)."""
    try:
        return load_tensors(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise _not_pytorch(path, e) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _starts_like_a_pickle(path: Path) -> bool:
    """torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (0x80, protocol 2-5)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _not_pytorch(path: Path, e: BaseException) -> CheckpointError:
    kind = "safetensors" if path.suffix == SAFETENSORS else "PyTorch"
    what = "is empty" if path.stat().st_size == 0 else f"is truncated or not a {kind} file"
    return CheckpointError(f"checkpoint '{path}' {what} ({type(e).__name__}: {_first_line(e)}); "
                           f"use another checkpoint (RUN_DIR/checkpoints/ keeps earlier ones)")


def strip_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def is_torchvision_state(obj: dict) -> bool:
    """A plain ResNet state dict in torchvision's key names (what encoder.pt holds since version 2)."""
    return "format" not in obj and "conv1.weight" in obj and "layer1.0.conv1.weight" in obj


def is_plain_state(obj: dict) -> bool:
    """Tensors under string keys and nothing else: encoder.pt (version 2) of any network."""
    return bool(obj) and "format" not in obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in obj.items())


def encoder_state_from(obj: dict, path: str | Path = "<dict>") -> tuple[dict, dict]:
    """(torchvision-named backbone state dict, metadata) from a loaded checkpoint of any layout above.
    `fc.*` keys are dropped. A plain state dict's metadata is only its architecture, inferred from the
    shapes (`load_encoder` adds the encoder.json beside the file)."""
    fmt = obj.get("format")
    if fmt == ENCODER_FORMAT:    # encoder.pt before the first release: the state dict inside a wrapper
        raise CheckpointError(f"'{path}' is an encoder file in the format written before byol's first release "
                              f"(format={ENCODER_FORMAT!r} around the state dict), which this version no longer "
                              f"reads; load the run's checkpoints/last.pt instead, or re-export the encoder "
                              f"(`python main.py --resume RUN_DIR` rewrites encoder.pt) or retrain")
    if fmt == "byol-checkpoint":
        state = strip_prefix(obj["online"], "encoder.")
        cfg = obj["config"]["network"]
        meta = {"network": cfg["name"], "small_stem": bool(obj.get("small_stem", False)),
                "step": obj["step"], "config": obj["config"]}
    elif is_torchvision_state(obj):
        state, meta = obj, {}
    else:   # byol-pytorch, sthalles/PyTorch-BYOL, solo-learn, mmpretrain: converted by name
        state, meta = convert_foreign(obj, path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "network" not in meta:
        meta.update(infer_resnet(state, path))
    return state, meta


def metadata_path(weights: str | Path) -> Path:
    """encoder.pt or encoder.safetensors -> encoder.json, the metadata written beside them."""
    return Path(weights).with_suffix(".json")


def read_metadata(weights: Path, sha256: str) -> dict | None:
    """The encoder.json beside a plain state dict, checked against the weights' SHA-256.

    None when there is no such file or it is not ours (another tool's JSON of the same name). A json
    describing other weights is an error, not a warning: its image size and normalisation define the
    embedding space, so using them with the wrong weights would give silently wrong vectors.
    """
    path = metadata_path(weights)
    if not path.is_file():
        return None
    move_away = (f"restore the files written together, or move '{path.name}' away to load the weights "
                 f"without it (the image size and data settings then come from the defaults, --config and "
                 f"overrides); a run's encoder files are rewritten by `python main.py --resume RUN_DIR`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"'{path}', the metadata of '{weights}', is not readable JSON "
                              f"({_first_line(e)}); {move_away}") from None
    if not isinstance(meta, dict) or meta.get("format") != ENCODER_FORMAT:
        return None
    entries = meta.get("weights") if isinstance(meta.get("weights"), dict) else {}
    recorded = {e.get("file"): e.get("sha256") for e in entries.values() if isinstance(e, dict)}
    if sha256 not in recorded.values():   # by digest, not name: a renamed pair still matches
        raise CheckpointError(
            f"'{path}' does not describe '{weights}': the file's SHA-256 is {sha256}, the json records "
            f"{recorded or 'no weight files'} (the weights were replaced, or an export was cut short); {move_away}")
    meta = {k: v for k, v in meta.items() if k not in ("format", "version", "weights")}
    network = (meta.get("config") or {}).get("network") or {}
    if network.get("name"):              # the one copy (version 2's top-level "network" said the same)
        meta["network"] = network["name"]
    return meta


def load_encoder(path: str | Path, trust: bool = False) -> tuple[dict, dict]:
    """(torchvision-named backbone state dict, metadata) of any encoder file this project reads.

    A plain state dict takes its metadata (network, step, config, normalisation ...) from the
    encoder.json beside it; without one, the architecture is inferred from the shapes. The
    metadata always holds "sha256", the file's own digest.
    """
    path = Path(path)
    obj = load_file(path, trust=trust)
    sha256 = file_sha256(path)
    saved = read_metadata(path, sha256) if is_plain_state(obj) else None
    if saved is not None and not is_resnet_name(str(saved.get("network"))):
        # any other network: its shapes say nothing we could check, the json names it (and its kwargs)
        state = {k: v for k, v in obj.items() if not k.startswith("fc.")}
        return state, {**saved, "sha256": sha256}
    state, meta = encoder_state_from(obj, path)
    if saved is not None:
        if (saved.get("network"), bool(saved.get("small_stem"))) != (meta["network"], meta["small_stem"]):
            raise CheckpointError(f"'{metadata_path(path)}' says {saved.get('network')} "
                                  f"(small_stem={saved.get('small_stem')}) but the tensors of '{path}' are a "
                                  f"{meta['network']} (small_stem={meta['small_stem']})")
        meta = {**saved, **meta}
    meta["sha256"] = sha256
    return state, meta
