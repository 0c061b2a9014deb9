"""Embed a dataset split with a trained encoder (or store its raw pixels) into an HDF5 feature store.

    python -m byol.extract runs/byol/checkpoints/last.pt --split train --out features/
    python -m byol.extract runs/byol/encoder.pt --split test --out features/ data.root=/data
    python -m byol.extract runs/byol/encoder.pt --split train --out features/ \\
           data.name=folder data.root=/data/photos           # a folder of images (paths are stored)
    python -m byol.extract resnet18-weights.pth --split train --out features/ --config config.yaml
    python -m byol.extract --encoder pixels --split train --out pixels/ [--config FILE] [k=v ...]
    torchrun --nproc-per-node=4 -m byol.extract runs/byol/encoder.pt --split unlabeled --out features/

Writes OUT/SPLIT/{shard-00000.h5, ..., manifest.json} (layout: byol/store/reader.py) and prints a JSON
summary as its last line. Data settings come from the checkpoint's saved config, then --config FILE
(for `--encoder pixels`: --config or ./config.yaml; a torchvision state dict has no saved config),
then `section.key=value` arguments. Pixels are stored as value / 255, flattened CHW (27,648 per STL-10 image).

Shard k holds rows [k*R, (k+1)*R) of the split (R = --rows-per-shard); under torchrun rank r
computes the shards with k % world == r, and rank 0 writes the manifest once all are done.
Embeddings are the encoder's pooled output ("avgpool", 512-d for resnet18/34, 2048-d for resnet50)
in eval mode, no augmentation, at the checkpoint's image size and normalisation, in fp32 and
bit-equal to a plain forward; --precision bf16 and --channels-last are faster, not exact.
Reruns with the same settings reuse finished shards (an interrupted run resumes where it
stopped, giving byte-identical shards); a directory holding a store with other settings is
refused unless --overwrite is given.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

from byol.base import distributed as dist_utils
from byol.command_line import (DEFAULT_CONFIG, add_checkpoint_arguments, add_config_arguments, add_device_arguments,
                      add_loader_arguments, add_overwrite_argument, add_progress_argument, check_overrides,
                      looks_like_override, parse_arguments, run_command)
from byol.base.errors import ConfigError, StoreError
from byol.base.file_lock import exclusive_writer
from byol.base.provenance import library_versions
from byol.data import build_dataset
from byol.data.batches import default_workers, iter_batches
from byol.encoders.source import PIXELS, PRECISIONS, load_source
from byol.extract.embed_loop import EmbedOptions, ShardGroups, data_settings, embed_rows
from byol.store import DTYPES
from byol.store.resume import keep_finished_shards, prepare_split_dir, shard_count, shard_rows
from byol.store.sink import ShardSink
from byol.store.writer import write_manifest

log = logging.getLogger("byol")

def extract(source: str | Path, split: str | None, out: str | Path, overrides=(), *,
            config_file: str | Path | None = None, rows_per_shard: int = 10_000, dtype: str = "float32",
            batch_size: int = 256, num_workers: int | None = None, device: str = "auto",
            precision: str = "fp32", channels_last: bool = False, trust_checkpoint: bool = False,
            overwrite: bool = False, progress: bool = True) -> dict:
    """Write the feature store OUT/SPLIT/ and return the summary dict.

    source: a checkpoint path (ours: checkpoints/*.pt or encoder.pt; or a torchvision ResNet state
    dict) or "pixels". split: the dataset split (None: the config's data.split). overrides:
    ["data.root=/data", ...] on top of the checkpoint's config (and `config_file`). Under torchrun
    every rank calls this; each computes its own shards. channels_last: NHWC convolutions, faster
    on CPUs but not bit-equal to a plain forward (differences ~1e-7 relative).
    """
    options = EmbedOptions(list(overrides), rows_per_shard, dtype, batch_size, num_workers, device, precision,
                           channels_last, trust_checkpoint, overwrite, progress)
    started = time.perf_counter()
    owns_group = not dist.is_initialized()
    try:
        ctx = dist_utils.setup(device)
    except dist_utils.DeviceError as e:    # --device cuda without a GPU, or no such device
        raise e.for_setting("--device", "--device ") from None
    try:
        result = _extract(ctx, source, split, Path(out), config_file, options, started)
    except BaseException:
        if owns_group and dist.is_initialized():   # no barrier: the other ranks may be stuck elsewhere
            dist.destroy_process_group()
        raise
    if owns_group:
        dist_utils.teardown()
    return result


def _extract(ctx, source, split, out: Path, config_file, o: EmbedOptions, started: float) -> dict:
    encoder, cfg = load_source(source, o.overrides, config_file, o.trust_checkpoint)
    split = cfg.data.split if split is None else str(split)
    if not split or "/" in split or split in (".", ".."):
        raise ConfigError(f"--split {split!r} is not a split name (e.g. train, test, unlabeled)")
    cfg.data.split = split
    dataset = build_dataset(cfg.data, encoder.image_size, split)
    encoder.to(ctx.device, o.precision, o.channels_last)
    n, split_dir = len(dataset), out / split
    n_shards = shard_count(n, o.rows_per_shard)
    attrs, settings = encoder.provenance(cfg, o.dtype, o.rows_per_shard)
    settings.update(split=split, data=data_settings(cfg.data),
                    channels_last=bool(o.channels_last and encoder.module is not None))
    attrs.update(versions=library_versions(), split=split, dataset=cfg.data.name,
                 classes=list(getattr(dataset, "classes", []) or []))

    with contextlib.ExitStack() as held:     # rank 0 holds the store's write lock until the manifest is written
        known_sha = _open_split_dir(ctx, held, split_dir, settings, n_shards, o.overwrite)
        mine = [k for k in range(n_shards) if k % ctx.world_size == ctx.rank]
        entries, todo = keep_finished_shards(split_dir, mine, n, o.rows_per_shard, encoder.dim, o.dtype, known_sha)
        plan = [(k, *shard_rows(k, n, o.rows_per_shard)) for k in todo]     # (shard, start, stop)
        ranges = [(a, min(a + o.batch_size, stop)) for _, start, stop in plan for a in range(start, stop, o.batch_size)]
        rows_todo = sum(b - a for a, b in ranges)
        if ctx.is_main:
            log.info("extracting %s (%d of %d rows, %d shards, %d reused) with %s on %s -> %s", split, rows_todo, n,
                     n_shards, len(entries), encoder.name, ctx.device, split_dir)
        workers = default_workers(dataset) if o.num_workers is None else int(o.num_workers)
        sink = ShardSink(split_dir, encoder.dim, o.dtype, hasattr(dataset, "relative_path"), attrs, settings)
        bar = tqdm(total=rows_todo, unit="img", desc=f"extract {split}", dynamic_ncols=True,
                   disable=not (o.progress and ctx.is_main))

        def interrupted(signal: str) -> str:
            return (f"interrupted ({signal}): {len(entries) + len(sink.entries)} of {len(mine)} shards of "
                    f"{split_dir} are finished and kept, the one in progress was removed; run the same "
                    f"command again to complete the store")
        t_loop = time.perf_counter()
        entries.update(embed_rows(lambda images: (encoder.embed(images), None),
                                  iter_batches(dataset, ranges, workers),
                                  ShardGroups(((k, stop - start) for k, start, stop in plan), o.batch_size),
                                  sink, bar, interrupted))
        shards, done, reused, loop_s = _gathered(ctx, list(entries.values()), rows_todo, len(mine) - len(todo),
                                                 time.perf_counter() - t_loop)
        if ctx.is_main:
            write_manifest(split_dir, shards, encoder.dim, o.dtype, settings, attrs)
        dist_utils.barrier()
    return {"split_dir": str(split_dir), "n_rows": n, "dim": encoder.dim, "n_shards": n_shards,
            # seconds: the whole call; img_per_s: rows computed / time from first read to last shard closed
            "seconds": round(time.perf_counter() - started, 3), "img_per_s": round(done / loop_s, 2) if done else 0.0,
            "extracted_rows": done, "reused_shards": reused, "encoder": encoder.name, "dtype": o.dtype,
            "world_size": ctx.world_size, "device": str(ctx.device)}


def _open_split_dir(ctx, held: contextlib.ExitStack, split_dir: Path, settings: dict, n_shards: int,
                    overwrite: bool) -> dict[str, str]:
    """Rank 0 takes the write lock and inspects (and if asked, clears) the directory; every rank
    learns the outcome: {shard name: sha256} of an earlier manifest with the same settings."""
    outcome = None
    if ctx.is_main:
        try:
            held.enter_context(exclusive_writer(split_dir))   # a second extraction here refuses
            outcome = ("ok", prepare_split_dir(split_dir, settings, n_shards, overwrite))
        except StoreError as e:
            outcome = ("error", str(e))
    outcome = dist_utils.broadcast_object(outcome)
    if outcome[0] == "error":
        raise StoreError(outcome[1])
    return outcome[1]


def _gathered(ctx, shards: list[dict], done: int, reused: int, loop_s: float) -> tuple[list[dict], int, int, float]:
    """(every rank's shard entries, rows computed, shards reused, the slowest loop's seconds)."""
    if not ctx.distributed:
        return shards, done, reused, loop_s
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, (shards, done, reused, loop_s))
    return ([s for part in gathered for s in part[0]], sum(part[1] for part in gathered),
            sum(part[2] for part in gathered), max(part[3] for part in gathered))


def _source_and_overrides(checkpoint: str | None, overrides: list[str], encoder: str) -> tuple[str, list[str]]:
    """The CHECKPOINT is the first positional argument and the overrides follow; with --encoder pixels
    there is no checkpoint, so every positional argument is an override."""
    if encoder == PIXELS:
        return PIXELS, [checkpoint, *overrides] if checkpoint is not None else list(overrides)
    if checkpoint is None:
        raise ConfigError("give the CHECKPOINT to embed with (e.g. runs/byol/encoder.pt), "
                          "or --encoder pixels to store raw pixels")
    if looks_like_override(checkpoint) and not Path(checkpoint).exists():
        raise ConfigError(f"{checkpoint!r} stands where the CHECKPOINT goes: give the checkpoint first, "
                          f"then section.key=value overrides")
    return checkpoint, list(overrides)


def build_parser(prog: str = "python -m byol.extract") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                        help="ours, a torchvision ResNet state dict or an imported layout (none with --encoder pixels)")
    parser.add_argument("--encoder", choices=("checkpoint", PIXELS), default="checkpoint",
                        help="pixels: store raw pixels / 255 (no checkpoint)")
    parser.add_argument("--split", default=None, help="dataset split (default: the config's data.split)")
    parser.add_argument("--out", required=True, help="store root: writes OUT/SPLIT/")
    add_config_arguments(parser, "YAML merged over the checkpoint's config (pixels: default ./config.yaml if present)",
                         "config overrides on top of the checkpoint's config, e.g. data.root=/data")
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    add_loader_arguments(parser)
    add_device_arguments(parser, PRECISIONS)
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC convolutions: faster on CPUs, not bit-equal to a plain forward")
    add_checkpoint_arguments(parser)
    add_overwrite_argument(parser, "replace a store written with other settings")
    add_progress_argument(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m byol.extract") -> None:
    args = parse_arguments(build_parser(prog), argv)

    def run() -> dict:
        source, overrides = _source_and_overrides(args.checkpoint, args.overrides, args.encoder)
        overrides = check_overrides(overrides)
        config = args.config
        if source == PIXELS and config is None and Path(DEFAULT_CONFIG).is_file():
            config = DEFAULT_CONFIG
        return extract(source, args.split, args.out, overrides, config_file=config,
                       rows_per_shard=args.rows_per_shard, dtype=args.dtype, batch_size=args.batch_size,
                       num_workers=args.num_workers, device=args.device, precision=args.precision,
                       channels_last=args.channels_last,
                       trust_checkpoint=args.trust_checkpoint, overwrite=args.overwrite,
                       progress=not args.no_progress)

    run_command(run)


if __name__ == "__main__":
    main()
