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

import numpy as np
import torch.distributed as dist
from tqdm import tqdm

from byol import distributed as dist_utils
from byol.cli import (DEFAULT_CONFIG, add_checkpoint_arguments, add_config_arguments, add_device_arguments,
                      add_loader_arguments, add_overwrite_argument, add_progress_argument, check_overrides,
                      looks_like_override, parse_arguments, run_command)
from byol.pretrain.checkpoint import library_versions
from byol.data import build_dataset
from byol.errors import ConfigError, Interrupted, StoreError
from byol.encoders.source import PIXELS, PRECISIONS, load_source
from byol.data.batches import default_workers, iter_batches
from byol.store.sink import ShardSink
from byol.store import DTYPES
from byol.store.resume import keep_finished_shards, prepare_split_dir, shard_count, shard_rows
from byol.store.writer import write_manifest
from byol.store.lock import exclusive_writer
from byol.stopping import StopSignals, signal_name

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
    for name, value, low in (("rows_per_shard", rows_per_shard, 1), ("batch_size", batch_size, 1)):
        if int(value) < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    started = time.perf_counter()
    owns_group = not dist.is_initialized()
    try:
        ctx = dist_utils.setup(device)
    except dist_utils.DeviceError as e:    # --device cuda without a GPU, or no such device
        raise e.for_setting("--device", "--device ") from None
    try:
        result = _extract(ctx, source, split, Path(out), list(overrides), config_file, int(rows_per_shard),
                          dtype, int(batch_size), num_workers, precision, channels_last, trust_checkpoint,
                          overwrite, progress, started)
    except BaseException:
        if owns_group and dist.is_initialized():   # no barrier: the other ranks may be stuck elsewhere
            dist.destroy_process_group()
        raise
    if owns_group:
        dist_utils.teardown()
    return result


def _extract(ctx, source, split, out, overrides, config_file, rows_per_shard, dtype, batch_size,
             num_workers, precision, channels_last, trust, overwrite, progress, started) -> dict:
    encoder, cfg = load_source(source, overrides, config_file, trust)
    split = cfg.data.split if split is None else str(split)
    if not split or "/" in split or split in (".", ".."):
        raise ConfigError(f"--split {split!r} is not a split name (e.g. train, test, unlabeled)")
    cfg.data.split = split
    dataset = build_dataset(cfg.data, encoder.image_size, split)
    encoder.to(ctx.device, precision, channels_last)
    n = len(dataset)
    n_shards = shard_count(n, rows_per_shard)
    split_dir = out / split
    attrs, settings = encoder.provenance(cfg, dtype, rows_per_shard)
    settings.update(split=split, data=_data_settings(cfg.data),
                    channels_last=bool(channels_last and encoder.module is not None))
    attrs.update(versions=library_versions(), split=split, dataset=cfg.data.name,
                 classes=list(getattr(dataset, "classes", []) or []))
    with_paths = hasattr(dataset, "relative_path")

    # Rank 0 holds the store's write lock until the manifest is written.
    with contextlib.ExitStack() as held:
        # Rank 0 inspects (and if asked, clears) the directory; everyone learns the outcome.
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
        known_sha = outcome[1]

        mine = [k for k in range(n_shards) if k % ctx.world_size == ctx.rank]
        entries, todo = keep_finished_shards(split_dir, mine, n, rows_per_shard, encoder.dim, dtype, known_sha)
        batches = [(k, a, min(a + batch_size, stop)) for k in todo
                   for start, stop in [shard_rows(k, n, rows_per_shard)] for a in range(start, stop, batch_size)]
        rows_todo = sum(b - a for _, a, b in batches)
        if ctx.is_main:
            log.info("extracting %s (%d of %d rows, %d shards, %d reused) with %s on %s -> %s", split, rows_todo, n,
                     n_shards, len(entries), encoder.name, ctx.device, split_dir)
        workers = default_workers(dataset) if num_workers is None else int(num_workers)
        sink = ShardSink(split_dir, encoder.dim, dtype, with_paths, attrs, settings)
        bar = tqdm(total=rows_todo, unit="img", desc=f"extract {split}", dynamic_ncols=True,
                   disable=not (progress and ctx.is_main))
        t_loop = time.perf_counter()
        try:
            # SIGINT/SIGTERM/SIGUSR1 (to this process or its whole group, reader workers included):
            # stop before the next batch; finished shards stay, the one in progress is deleted.
            with StopSignals() as stop:
                for k, a, b, (images, labels, paths) in iter_batches(dataset, batches, workers):
                    if stop.signum:
                        break
                    sink.put(k, encoder.embed(images), labels, np.arange(a, b, dtype=np.int64), paths,
                             last=b == shard_rows(k, n, rows_per_shard)[1])
                    bar.update(b - a)
                else:   # every row queued: finish, even if a signal came in meanwhile
                    entries.update(sink.finish())
            if stop.signum and len(entries) < len(mine):
                sink.abort()
                kept = len(entries) + len(sink.entries)
                raise Interrupted(f"interrupted ({signal_name(stop.signum)}): {kept} of {len(mine)} shards of "
                                  f"{split_dir} are finished and kept, the one in progress was removed; run "
                                  f"the same command again to complete the store", stop.signum)
        except BaseException:
            sink.abort()
            raise
        finally:
            bar.close()
        loop_s, reused = time.perf_counter() - t_loop, len(mine) - len(todo)
        shards, done = list(entries.values()), rows_todo
        if ctx.distributed:
            gathered = [None] * ctx.world_size
            dist.all_gather_object(gathered, (shards, rows_todo, reused, loop_s))
            shards = [s for part in gathered for s in part[0]]
            done, reused = sum(part[1] for part in gathered), sum(part[2] for part in gathered)
            loop_s = max(part[3] for part in gathered)
        if ctx.is_main:
            write_manifest(split_dir, shards, encoder.dim, dtype, settings, attrs)
        dist_utils.barrier()
        seconds = time.perf_counter() - started
        return {"split_dir": str(split_dir), "n_rows": n, "dim": encoder.dim, "n_shards": n_shards,
                # seconds: the whole call; img_per_s: rows computed / time from first read to last shard closed
                "seconds": round(seconds, 3), "img_per_s": round(done / loop_s, 2) if done else 0.0,
                "extracted_rows": done, "reused_shards": reused, "encoder": encoder.name, "dtype": dtype,
                "world_size": ctx.world_size, "device": str(ctx.device)}


def _data_settings(data) -> dict:
    """The data keys that decide which images (in which order) the store holds."""
    out = {"name": data.name, "max_images": data.max_images}
    if data.name != "digits":   # digits are embedded: their root means nothing
        out["root"] = str(Path(data.root).resolve())
    if data.name == "folder":
        out["on_bad_image"] = data.on_bad_image
    return out


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
