"""Backbones from other BYOL / self-supervised code bases, converted to torchvision ResNet names.

`byol.encoders.files.encoder_state_from` calls `convert_foreign(obj, path)` for any dict that is neither a
checkpoint of this project nor a plain torchvision ResNet state dict. Supported layouts (after
`torch.load(..., weights_only=True)`):

  byol-pytorch (lucidrains)     BYOL learner's own state dict: `online_encoder.net.<torchvision name>`
                                (also `target_encoder.net.*`, `online_encoder.projector.*`,
                                `online_predictor.*`); the ONLINE encoder is used. Also accepted
                                wrapped as {"state_dict": ...} or {"model": ...}.
  sthalles/PyTorch-BYOL         model.pth: {"online_network_state_dict": {"encoder.N.*", "projetion.*"},
                                "target_network_state_dict": ..., "optimizer_state_dict": ...} where N
                                indexes the children of a torchvision resnet without fc:
                                0=conv1, 1=bn1, 2=relu, 3=maxpool, 4..7=layer1..layer4, 8=avgpool.
  solo-learn                    Lightning checkpoint {"state_dict": {"backbone.<torchvision name>",
                                "momentum_backbone.*", "projector.*", "classifier.*", ...}}.
  mmpretrain / mmselfsup        {"state_dict": {"backbone.conv1.weight", "backbone.bn1.*",
                                "backbone.layerI.J.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,
                                downsample.1}.*", "neck.*", "head.*", "target_net.*"...}}: the mmcv /
                                mmpretrain ResNet (deep_stem=False, style="pytorch") uses torchvision's
                                names under `backbone.`. ResNetV1c/V1d (`backbone.stem.*`) is refused.
  any of the above nested one level under "state_dict" / "model" / "online_network_state_dict".

Conversion is by parameter NAME, never by position: every backbone tensor of the source must map
to a tensor of the torchvision encoder with the same shape, and every tensor of the encoder must
be supplied (BatchNorm `num_batches_tracked` counters, which some code bases drop, are filled with
0), otherwise a CheckpointError lists what is unmatched. `fc.*` is dropped (the encoder ends at
the pooled features). The architecture (resnet18/34/50, small stem) is inferred from the shapes.
"""
from __future__ import annotations

import re

import torch

from byol.base.errors import CheckpointError
from byol.encoders.build import build_encoder, infer_resnet

# sthalles/PyTorch-BYOL: children of torchvision's resnet without fc.
STHALLES_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# Prefixes whose tensors are the backbone, by layout name, in the order they are tried.
PREFIXES = (("byol-pytorch", "online_encoder.net."), ("solo-learn/mmpretrain", "backbone."),
            ("byol-pytorch (target only)", "target_encoder.net."), ("timm/DataParallel", "module."),
            ("solo-learn (encoder)", "encoder."))
NESTED = ("state_dict", "model", "online_network_state_dict", "network", "net")


def _tensors(d) -> dict:
    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)} \
        if isinstance(d, dict) else {}


def _sthalles(state: dict) -> dict | None:
    """`encoder.N.rest` -> torchvision names, or None if `state` is not in that layout."""
    keys = [k for k in state if k.startswith("encoder.")]
    if not keys or not all(re.match(r"^encoder\.\d+\.", k) for k in keys):
        return None
    out, unknown = {}, []
    for k in keys:
        _, n, rest = k.split(".", 2)
        if n not in STHALLES_CHILDREN:
            unknown.append(k)
        else:
            out[f"{STHALLES_CHILDREN[n]}.{rest}"] = state[k]
    if unknown:
        raise CheckpointError(f"sthalles/PyTorch-BYOL encoder tensors with no torchvision ResNet name: "
                              f"{unknown[:10]}")
    return out


def find_backbone(obj: dict) -> tuple[str, dict] | None:
    """(layout name, torchvision-named backbone tensors, fc included) or None if no layout fits."""
    candidates = [("", obj)] + [(key, obj[key]) for key in NESTED if isinstance(obj.get(key), dict)]
    for where, d in candidates:
        tensors = _tensors(d)
        if not tensors:
            continue
        if "conv1.weight" in tensors and "layer1.0.conv1.weight" in tensors:
            return f"torchvision ResNet{' under ' + where if where else ''}", tensors
        if where == "online_network_state_dict" or "online_network_state_dict" in obj:
            converted = _sthalles(tensors)
            if converted is not None:
                return "sthalles/PyTorch-BYOL", converted
        for name, prefix in PREFIXES:
            sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if sub:
                if "stem.0.weight" in sub or any(k.startswith("stem.") for k in sub):
                    raise CheckpointError("the backbone has a deep stem (`backbone.stem.*`, mmpretrain "
                                          "ResNetV1c/V1d); only the plain ResNet stem (conv1/bn1) is supported")
                return name, sub
        converted = _sthalles(tensors)
        if converted is not None:
            return "sthalles/PyTorch-BYOL", converted
    return None


def match_to_encoder(state: dict, path="<dict>", layout: str = "") -> tuple[dict, dict]:
    """Check `state` (torchvision names) against a freshly built encoder of the inferred architecture,
    tensor by tensor (name and shape); returns (state ready for load_state_dict(strict=True), meta)."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" not in state:
        raise CheckpointError(f"checkpoint '{path}' ({layout}): no `conv1.weight` among the backbone "
                              f"tensors (first keys: {list(state)[:5]})")
    meta = infer_resnet(state, path)
    reference = build_encoder(meta["network"], meta["small_stem"]).state_dict()
    out, unmatched, wrong_shape = {}, [], []
    for k, v in state.items():
        if k not in reference:
            unmatched.append(k)
        elif tuple(v.shape) != tuple(reference[k].shape):
            wrong_shape.append(f"{k} {tuple(v.shape)} vs {tuple(reference[k].shape)}")
        else:
            out[k] = v.detach().clone().to(reference[k].dtype)
    missing = []
    for k, v in reference.items():
        if k not in out and k not in [w.split(" ")[0] for w in wrong_shape]:
            if k.endswith("num_batches_tracked"):
                out[k] = torch.zeros_like(v)
            else:
                missing.append(k)
    if unmatched or wrong_shape or missing:
        parts = []
        for what, items in (("source tensors with no encoder counterpart", unmatched),
                            ("shape mismatches", wrong_shape), ("encoder tensors not supplied", missing)):
            if items:
                parts.append(f"{len(items)} {what}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
        raise CheckpointError(f"checkpoint '{path}' ({layout}) does not convert to a {meta['network']} "
                              f"encoder by name: " + "; ".join(parts))
    meta["imported_from"] = layout
    return out, meta


def convert_foreign(obj: dict, path="<dict>") -> tuple[dict, dict]:
    """(torchvision-named encoder state, metadata) from a foreign checkpoint; CheckpointError otherwise."""
    found = find_backbone(obj)
    if found is None:
        raise CheckpointError(
            f"checkpoint '{path}' is neither a byol checkpoint nor a known ResNet layout (torchvision, "
            f"byol-pytorch, sthalles/PyTorch-BYOL, solo-learn, mmpretrain); first keys: {list(obj)[:5]}")
    layout, state = found
    return match_to_encoder(state, path, layout)
