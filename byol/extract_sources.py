"""What `byol.extract` reads: the encoder (a checkpoint, or raw pixels) and batches of a dataset.

An `EncoderSource` turns a uint8 batch [n, 3, S, S] into float32 rows [n, dim], deterministically:
eval mode, no augmentation, the checkpoint's image size and ImageNet normalisation (via
`augment.eval_transform`), fp32 unless bf16 is asked for. The `pixels` source stores the image
itself, flattened CHW and scaled to [0, 1] (pixel / 255): 3 * 96 * 96 = 27,648 values per
STL-10 image, so PCA baselines read the same kind of store as the encoders' embeddings.

Batches are produced ahead of the compute, either by a background thread (datasets with
`get_batch`: STL-10 read with pread, digits in memory) or by DataLoader worker processes (image
folders, whose decoding is CPU-bound), in plan order.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from byol import checkpoint as ckpt_io
from byol.augment import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from byol.config import Config, ConfigError, load_config
from byol.errors import CheckpointError
from byol.model import FEATURE_DIMS, build_encoder

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
    state, meta = ckpt_io.encoder_state_from(ckpt_io.load_file(path, trust=trust), path)
    cfg = load_config(config_file, overrides, base=meta.get("config"))
    module = build_encoder(meta["network"], bool(meta.get("small_stem", False)))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit a {meta['network']} encoder "
                              f"({str(e).splitlines()[0][:200]})") from None
    return EncoderSource(meta["network"], cfg.data_transforms.input_shape[0], FEATURE_DIMS[meta["network"]],
                         "avgpool", module=module, checkpoint=str(path.resolve()),
                         checkpoint_sha256=ckpt_io.sha256_of(path), step=meta.get("step")), cfg


# ------------------------------------------------------------------------------------ reading
def read_rows(dataset, start: int, stop: int) -> tuple[torch.Tensor, np.ndarray, list[str] | None]:
    """Rows [start, stop) of a dataset -> (uint8 [n, 3, S, S], int64 labels [n], relative paths or None).

    Image folders decode with `load`, which raises a DataError naming an undecodable file rather
    than silently substituting the next image (as training does)."""
    idx = np.arange(start, stop, dtype=np.int64)
    if hasattr(dataset, "get_batch"):
        images, labels = dataset.get_batch(idx)
        return images, np.asarray(labels, np.int64), None
    if hasattr(dataset, "load") and hasattr(dataset, "relative_path"):
        images = torch.stack([dataset.load(int(i)) for i in idx])
        return images, np.asarray(dataset.labels, np.int64)[idx], [dataset.relative_path(int(i)) for i in idx]
    items = [dataset[int(i)] for i in idx]
    return torch.stack([im for im, _ in items]), np.array([y for _, y in items], np.int64), None


class _Batches(Dataset):
    """Item j = batch j of the plan: (shard, start, stop, rows)."""

    def __init__(self, dataset, batches: list[tuple[int, int, int]]):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int):
        shard, start, stop = self.batches[j]
        return shard, start, stop, read_rows(self.dataset, start, stop)


def default_workers(dataset) -> int:
    """0 (one background thread) for datasets read with get_batch; processes for image decoding."""
    import os
    return 0 if hasattr(dataset, "get_batch") else min(4, os.cpu_count() or 1)


def iter_batches(dataset, batches: list[tuple[int, int, int]], num_workers: int, depth: int = 3):
    """Yield (shard, start, stop, (images, labels, paths)) in plan order, read ahead of the consumer."""
    plan = _Batches(dataset, batches)
    if num_workers > 0:
        yield from DataLoader(plan, batch_size=None, shuffle=False, num_workers=num_workers,
                              prefetch_factor=depth, persistent_workers=False)
    else:
        yield from in_background((plan[j] for j in range(len(plan))), depth)


def in_background(iterable, depth: int):
    """Run `iterable` in a thread, at most `depth` items ahead; its exceptions re-raise here."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run():
        try:
            for item in iterable:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as e:   # handed to the consumer, which re-raises it
            put(("error", e))

    thread = threading.Thread(target=run, name="extract-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
