"""An encoder ready to embed images: any checkpoint (or raw pixels) -> float32 rows.

An `EncoderSource` turns a uint8 batch [n, 3, S, S] into float32 rows [n, dim], deterministically:
eval mode, no augmentation, the checkpoint's image size and ImageNet normalisation (via
`augment.eval_transform`), fp32 unless bf16 is asked for. The `pixels` source stores the image
itself, flattened CHW and scaled to [0, 1] (pixel / 255): 3 * 96 * 96 = 27,648 values per
STL-10 image, so PCA baselines read the same kind of store as the encoders' embeddings.
Used by extraction, latent vectors and export alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from byol.atomic import file_sha256
from byol.config import Config, ConfigError, load_config
from byol.data.augment import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from byol.encoders.build import FEATURE_DIMS, build_encoder
from byol.encoders.files import encoder_state_from, load_file
from byol.errors import CheckpointError

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
    state, meta = encoder_state_from(load_file(path, trust=trust), path)
    cfg = load_config(config_file, overrides, base=meta.get("config"))
    module = build_encoder(meta["network"], bool(meta.get("small_stem", False)))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit a {meta['network']} encoder "
                              f"({str(e).splitlines()[0][:200]})") from None
    return EncoderSource(meta["network"], cfg.data_transforms.input_shape[0], FEATURE_DIMS[meta["network"]],
                         "avgpool", module=module, checkpoint=str(path.resolve()),
                         checkpoint_sha256=file_sha256(path), step=meta.get("step")), cfg


