"""Embed a dataset split with a trained encoder (or store its raw pixels) into an HDF5 feature store.

    python -m byol.extract runs/byol/checkpoints/last.pt --split train --out features/
    python -m byol.extract runs/byol/encoder.pt --split test --out features/ data.root=/data
    python -m byol.extract runs/byol/encoder.pt --split train --out features/ \\
           data.name=folder data.root=/data/photos           # a folder of images (paths are stored)
    python -m byol.extract resnet18-weights.pth --split train --out features/ --config config.yaml
    python -m byol.extract --encoder pixels --split train --out pixels/ [--config FILE] [k=v ...]
    torchrun --nproc-per-node=4 -m byol.extract runs/byol/encoder.pt --split unlabeled --out features/

Writes OUT/SPLIT/{shard-00000.h5, ..., manifest.json} (layout: byol/store.py) and prints a JSON
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
import json
import logging
import math
import time
from pathlib import Path

import h5py
import numpy as np
import torch.distributed as dist
from tqdm import tqdm

from byol import distributed as dist_utils
from byol.pretrain.checkpoint import library_versions
from byol.config import ConfigError, to_dict
from byol.data import build_dataset
from byol.errors import StoreError
from byol.encoders.source import PIXELS, PRECISIONS, load_source
from byol.data.batches import default_workers, iter_batches
from byol.store.sink import ShardSink
from byol.store import DTYPES, MANIFEST, file_sha256, shard_name
from byol.store.writer import write_manifest
from byol.store.lock import exclusive_writer

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
    except (ValueError, RuntimeError) as e:    # --device cuda without a GPU, or no such device
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(msg.replace("config key 'trainer.device'", "--device").replace("trainer.device=", "--device ")
                          if "trainer.device" in msg else f"--device {device!r}: {msg}") from None
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
    n_shards = math.ceil(n / rows_per_shard)
    split_dir = out / split
    settings = {"encoder": encoder.name, "checkpoint_sha256": encoder.checkpoint_sha256, "split": split,
                "data": _data_settings(cfg.data), "image_size": encoder.image_size,
                "rows_per_shard": rows_per_shard, "dtype": dtype, "layer": encoder.layer, "precision": precision,
                "channels_last": bool(channels_last and encoder.module is not None)}
    attrs = {"encoder": encoder.name, "checkpoint": encoder.checkpoint, "checkpoint_sha256": encoder.checkpoint_sha256,
             "step": encoder.step, "config": to_dict(cfg), "versions": library_versions(), "split": split,
             "image_size": encoder.image_size, "normalisation": encoder.normalisation, "layer": encoder.layer,
             "dataset": cfg.data.name, "classes": list(getattr(dataset, "classes", []) or [])}
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
        entries, todo = {}, []
        for k in mine:
            entry = reusable_shard(split_dir, k, _rows(k, n, rows_per_shard), encoder.dim, dtype, known_sha)
            if entry is not None:
                entries[k] = entry
            else:
                todo.append(k)
        batches = [(k, a, min(a + batch_size, stop)) for k in todo
                   for start, stop in [_rows(k, n, rows_per_shard)] for a in range(start, stop, batch_size)]
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
            for k, a, b, (images, labels, paths) in iter_batches(dataset, batches, workers):
                sink.put(k, encoder.embed(images), labels, np.arange(a, b, dtype=np.int64), paths,
                         last=b == _rows(k, n, rows_per_shard)[1])
                bar.update(b - a)
            entries.update(sink.finish())
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


def _rows(k: int, n: int, rows_per_shard: int) -> tuple[int, int]:
    """Rows [start, stop) of the split that shard k holds."""
    return k * rows_per_shard, min(n, (k + 1) * rows_per_shard)


def _data_settings(data) -> dict:
    """The data keys that decide which images (in which order) the store holds."""
    out = {"name": data.name, "max_images": data.max_images}
    if data.name != "digits":   # digits are embedded: their root means nothing
        out["root"] = str(Path(data.root).resolve())
    if data.name == "folder":
        out["on_bad_image"] = data.on_bad_image
    return out


def _differences(theirs, ours, prefix: str = "") -> list[str]:
    if not (isinstance(theirs, dict) and isinstance(ours, dict)):
        return [] if theirs == ours else [f"{prefix.rstrip('.') or 'settings'}: {theirs!r} there, {ours!r} now"]
    out = []
    for key in sorted(set(theirs) | set(ours)):
        out += _differences(theirs.get(key, "<absent>"), ours.get(key, "<absent>"), f"{prefix}{key}.")
    return out


def _other_settings(split_dir: Path, what: str) -> StoreError:
    return StoreError(f"'{split_dir}' holds a feature store written with other settings ({what}); "
                      f"use another --out, delete that directory, or pass --overwrite to replace it")


def prepare_split_dir(split_dir: Path, settings: dict, n_shards: int, overwrite: bool) -> dict[str, str]:
    """Make `split_dir` ready for an extraction with `settings` (rank 0 only, before any shard is written).

    Refuses a store (manifest or shard) written with other settings, unless `overwrite`, which
    deletes the store's files first. Removes temp files of an interrupted run, shards that cannot
    be opened or lie beyond n_shards, and the manifest (rewritten at the end). Returns
    {shard name: sha256} from a manifest with the same settings, to check those shards against.
    """
    split_dir = Path(split_dir)
    if overwrite and split_dir.is_dir():
        for pattern in ("shard-*.h5", ".shard-*.h5.tmp-*", MANIFEST, f".{MANIFEST}.tmp-*", "virtual.h5"):
            for path in split_dir.glob(pattern):
                path.unlink(missing_ok=True)
    known = {}
    manifest = split_dir / MANIFEST
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text(encoding="utf-8"))
            theirs, shards = saved["settings"], saved["shards"]
        except (ValueError, KeyError, TypeError):
            raise _other_settings(split_dir, f"its {MANIFEST} is unreadable") from None
        if theirs != settings:
            raise _other_settings(split_dir, "; ".join(_differences(theirs, settings)))
        known = {s["name"]: s["sha256"] for s in shards if isinstance(s, dict) and "sha256" in s}
        manifest.unlink()
    wanted = {shard_name(k) for k in range(n_shards)}
    for tmp in split_dir.glob(".shard-*.h5.tmp-*"):
        tmp.unlink(missing_ok=True)
    for path in sorted(split_dir.glob("shard-*.h5")):
        try:
            with h5py.File(path, "r") as f:
                theirs = json.loads(f.attrs["settings_json"])
        except (OSError, KeyError, ValueError):
            log.warning("%s cannot be read; it will be extracted again", path)
            path.unlink()
            continue
        if theirs != settings:
            raise _other_settings(split_dir, f"{path.name}: " + "; ".join(_differences(theirs, settings)))
        if path.name not in wanted:
            path.unlink()
    return known


def reusable_shard(split_dir: Path, k: int, rows: tuple[int, int], dim: int, dtype: str,
                   known_sha: dict[str, str]) -> dict | None:
    """The manifest entry of a finished shard k that can be kept, else None (a bad one is deleted).

    Its settings were checked by prepare_split_dir; it must hold exactly its rows, and if the
    previous manifest lists it, still have the SHA-256 recorded there."""
    path = split_dir / shard_name(k)
    if not path.is_file():
        return None
    start, stop = rows
    try:
        with h5py.File(path, "r") as f:
            emb, idx = f["embeddings"], f["indices"]
            ok = (emb.shape == (stop - start, dim) and emb.dtype == np.dtype(dtype)
                  and f["labels"].shape == idx.shape == (stop - start,)
                  and (start == stop or (idx[0] == start and idx[-1] == stop - 1)))
    except (OSError, KeyError):
        ok = False
    digest = file_sha256(path) if ok else None
    if ok and known_sha.get(path.name, digest) != digest:
        ok = False
    if not ok:
        log.warning("%s is not the finished shard this extraction needs; extracting it again", path)
        path.unlink()
        return None
    return {"name": path.name, "rows": stop - start, "sha256": digest}


def _split_arguments(items: list[str], pixels: bool) -> tuple[str | None, list[str]]:
    """Positional arguments -> (checkpoint, overrides): the checkpoint is the first that is not key=value."""
    import re
    if pixels:
        return PIXELS, items
    for i, item in enumerate(items):
        if not re.match(r"^[A-Za-z_][\w.]*=", item):
            return item, items[:i] + items[i + 1:]
    return None, items


def main(argv: list[str] | None = None) -> None:
    from byol.cli import run_command
    parser = argparse.ArgumentParser(prog="python -m byol.extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", metavar="CHECKPOINT | section.key=value",
                        help="checkpoint (ours or a torchvision ResNet state dict), then config overrides")
    parser.add_argument("--encoder", choices=("checkpoint", PIXELS), default="checkpoint",
                        help="pixels: store raw pixels / 255 (no checkpoint)")
    parser.add_argument("--split", default=None, help="dataset split (default: the config's data.split)")
    parser.add_argument("--out", required=True, help="store root: writes OUT/SPLIT/")
    parser.add_argument("--config", default=None,
                        help="YAML merged over the checkpoint's config (pixels: default ./config.yaml if present)")
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader processes (default: a reader thread, or 4 for image folders)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: autocast, not exact")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC convolutions: faster on CPUs, not bit-equal to a plain forward")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow checkpoints that need pickle code (only from authors you trust)")
    parser.add_argument("--overwrite", action="store_true", help="replace a store written with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_intermixed_args(argv)

    def run() -> dict:
        source, overrides = _split_arguments(args.items, args.encoder == PIXELS)
        if source is None:
            raise ConfigError("give the CHECKPOINT to embed with (e.g. runs/byol/encoder.pt), "
                              "or --encoder pixels to store raw pixels")
        config = args.config
        if source == PIXELS and config is None and Path("config.yaml").is_file():
            config = "config.yaml"
        return extract(source, args.split, args.out, overrides, config_file=config,
                       rows_per_shard=args.rows_per_shard, dtype=args.dtype, batch_size=args.batch_size,
                       num_workers=args.num_workers, device=args.device, precision=args.precision,
                       channels_last=args.channels_last,
                       trust_checkpoint=args.trust_checkpoint, overwrite=args.overwrite,
                       progress=not args.no_progress)

    run_command(run)


if __name__ == "__main__":
    main()
