"""An encoder ready to embed images: any checkpoint (or raw pixels) -> float32 rows.

An `EncoderSource` turns a uint8 batch [n, 3, S, S] into float32 rows [n, dim], deterministically:
eval mode, no augmentation, the checkpoint's image size and normalisation (its saved ones, else
ImageNet's; via `augment.eval_transform`), fp32 unless bf16 is asked for. The `pixels` source stores the image
itself, flattened CHW and scaled to [0, 1] (pixel / 255): 3 * 96 * 96 = 27,648 values per
STL-10 image, so PCA baselines read the same kind of store as the encoders' embeddings.
Used by extraction, latent vectors and export alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from byol.base.errors import CheckpointError, ConfigError
from byol.config import Config, load_config, to_dict
from byol.data.augment import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from byol.encoders.build import build_encoder, encoder_dim
from byol.encoders.files import load_encoder
from byol.encoders.names import is_resnet_name

PIXELS = "pixels"
PRECISIONS = ("fp32", "bf16")


@dataclass
class EncoderSource:
    """The encoder and everything that defines its output space (recorded in every shard)."""

    name: str                        # resnet18 | resnet34 | resnet50 | pixels
    image_size: int
    dim: int
    layer: str                       # avgpool (the pooled ResNet output) | pixels
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    module: torch.nn.Module | None = None
    checkpoint: str | None = None    # resolved path
    checkpoint_sha256: str | None = None
    step: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    channels_last: bool = False

    @property
    def normalisation(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    def provenance(self, cfg: Config, dtype: str, rows_per_shard: int) -> tuple[dict, dict]:
        """(attrs, settings) of a feature store of this encoder's rows; the writing command adds its own keys.

        attrs: who computed the rows (encoder, checkpoint, its sha256 and step, the resolved config)
        and from what input (image size, normalisation, layer). settings: what a rerun must match to
        keep finished shards. Their FEATURE_ATTRS / FEATURE_SETTINGS keys (byol.store.format) decide
        whether two stores can be compared. Built here, not in the store, because every value is the
        encoder's own: the store stays a container of any dict. Call after `to()` (the precision).
        """
        attrs = {"encoder": self.name, "checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256,
                 "step": self.step, "config": to_dict(cfg), "image_size": self.image_size,
                 "normalisation": self.normalisation, "layer": self.layer}
        settings = {"encoder": self.name, "checkpoint_sha256": self.checkpoint_sha256, "image_size": self.image_size,
                    "layer": self.layer, "dtype": dtype, "rows_per_shard": int(rows_per_shard),
                    "precision": self.precision}
        return attrs, settings

    def to(self, device: torch.device, precision: str = "fp32", channels_last: bool = False) -> "EncoderSource":
        """Move the encoder to `device` in eval mode; fp32 (exact) or bf16 autocast; NHWC if channels_last."""
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device, self.precision, self.channels_last = device, precision, channels_last
        if self.module is not None:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            self.module = self.module.to(device, memory_format=fmt).eval().requires_grad_(False)
        return self

    @torch.inference_mode()
    def embed(self, images_u8: torch.Tensor) -> np.ndarray:
        """uint8 [n, 3, S, S] -> float32 [n, dim] (numpy, on the CPU)."""
        images_u8 = torch.as_tensor(images_u8)
        if self.module is None:   # pixels: value / 255, flattened CHW
            return images_u8.reshape(len(images_u8), -1).float().div_(255.0).numpy()
        x = eval_transform(images_u8.to(self.device, non_blocking=True), self.image_size, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            y = self.module(x)
        return y.float().cpu().numpy()


def load_source(source: str | Path, overrides=(), config_file: str | Path | None = None,
                trust: bool = False) -> tuple[EncoderSource, Config]:
    """(encoder source, resolved config) for a checkpoint path or "pixels".

    Config: defaults <- the checkpoint's saved config (ours) <- `config_file` <- `overrides`.
    `data.download` is off unless an override turns it on: extraction never fetches 2.5 GB
    because of a mistyped data.root.
    """
    overrides = ["data.download=false", *overrides]
    if str(source) == PIXELS:
        cfg = load_config(config_file, overrides)
        size = cfg.data_transforms.input_shape[0]
        return EncoderSource(PIXELS, size, 3 * size * size, PIXELS, mean=(0.0, 0.0, 0.0),
                             std=(1.0, 1.0, 1.0)), cfg
    path = Path(source)
    state, meta = load_encoder(path, trust=trust)
    cfg = load_config(config_file, overrides, base=meta.get("config"))
    network = meta["network"]    # our files: config.network.name, the copy the kwargs come from; others: inferred
    kwargs = ((meta.get("config") or {}).get("network") or {}).get("kwargs") or {}
    module = build_encoder(network, bool(meta.get("small_stem", False)), kwargs)
    size = cfg.data_transforms.input_shape[0]
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit a {meta['network']} encoder "
                              f"({str(e).splitlines()[0][:200]})") from None
    norm = meta.get("normalisation") or {}
    return EncoderSource(network, size, int(meta.get("feature_dim") or encoder_dim(module, network, size)),
                         "avgpool" if is_resnet_name(network) else "pre-classifier", mean=tuple(norm.get("mean", IMAGENET_MEAN)),
                         std=tuple(norm.get("std", IMAGENET_STD)), module=module,
                         checkpoint=str(path.resolve()), checkpoint_sha256=meta["sha256"],
                         step=meta.get("step")), cfg
