"""Latent vectors (the encoder's pooled features) of arbitrary images, for people and scripts.

Entry point: `latent_eval/generate_latent_out.py` (see its docstring for commands). Inputs, in
the order given (each kept in that order):

  image file         any Pillow-readable file, whatever its extension (decoded as `byol.extract`
                     decodes image folders: EXIF-upright, RGB, shorter side to the checkpoint's
                     image size, centre crop)
  folder             every image file below it (extensions of byol.data.image_folder.EXTENSIONS,
                     hidden files ignored), sorted by relative path exactly as an image-folder
                     extraction sorts them
  LIST.txt           one path per line (blank lines and lines starting with # ignored); relative
                     paths are relative to the list file's folder
  split:NAME         a split of the dataset in the checkpoint's config (e.g. split:test); change
                     data settings with --set data.root=... (as `byol.extract` overrides)

Vectors are computed with `EncoderSource.embed` (eval mode, fp32, ImageNet normalisation at the
checkpoint's image size), i.e. exactly as `python -m byol.extract` computes them.

Outputs (`--format`):

  store (default)    OUT/ is one split directory of the feature store (byol/store/): shards
                     OUT/shard-NNNNN.h5 + OUT/manifest.json. Row fields: embeddings, labels (-1
                     for files, the dataset label for split: inputs), indices (the input's position
                     among all inputs, skipped ones included), paths (the input path as given,
                     folder files joined to the folder; `split:NAME/<relative path or row>`).
                     With --head, each shard also holds `head_hidden` [N, h] float32,
                     `head_probs` [N, C] float32 and `head_pred` [N] int64, and the attribute
                     `head_classes` (JSON list: the original label of each probs column).
                     Read them with h5py (`FeatureStore` ignores them).
  npy                OUT.npy [n_written, dim] float32 + OUT.paths.txt (one path a line, row order);
                     with --head also OUT.head_hidden.npy, OUT.head_probs.npy, OUT.head_pred.npy and
                     OUT.head_classes.json.
  csv                OUT.csv: columns path, label, f0..f{dim-1}; with --head also h0..h{h-1},
                     p_<class> per class and pred. Written row by row.

Inputs that cannot be decoded (zero-byte files, text named .jpg, truncated files, images over
Pillow's decompression-bomb limit, missing files) are skipped and listed, with the reason, in the
report OUT/skipped.json (store) or OUT.skipped.json (npy, csv); with --strict the command then
exits 2 naming them (the outputs and the report are still written). Memory stays bounded: store
shards are appended per batch, npy rows go to a memory-mapped file, csv rows are written as they
come. The summary (last stdout line) holds n_inputs, n_written, n_skipped, dim, out, format.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from byol.errors import ConfigError, DataError, Interrupted
from byol.encoders.source import load_source
from byol.data.batches import read_rows
from byol.data.image_folder import EXTENSIONS, find_images, decode_image
from byol.latent_outputs import HEAD_FIELDS, CsvOut, NpyOut, StoreOut, check_out, out_base
from byol.stopping import StopSignals, ignore_stop_signals, iterate, signal_name

log = logging.getLogger("byol")

FORMATS = ("store", "npy", "csv")
SPLIT_PREFIX = "split:"


# ------------------------------------------------------------------------------------ inputs
@dataclass
class SplitInput:
    name: str
    dataset: object
    offset: int            # index of its first row among all inputs

    def __len__(self) -> int:
        return len(self.dataset)


def _read_list(list_file: Path) -> list[str]:
    out = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(str(p if p.is_absolute() else list_file.parent / p))
    return out


def expand_inputs(inputs: list[str]) -> list[str]:
    """Input arguments -> an ordered list of file paths and `split:NAME` entries."""
    out = []
    for item in inputs:
        item = str(item)
        if item.startswith(SPLIT_PREFIX):
            if not item[len(SPLIT_PREFIX):]:
                raise ConfigError(f"--input {item!r}: give a split name, e.g. split:test")
            out.append(item)
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            found = find_images([path], path)
            if not found:
                log.warning("folder '%s' holds no image files (%s)", path, " ".join(EXTENSIONS))
            out += [str(p) for p, _ in found]
        elif path.suffix.lower() == ".txt" and path.is_file():
            out += _read_list(path)
        else:
            out.append(str(path))   # a missing file is reported as skipped, not fatal
    return out


def _decode(path: str, size: int):
    """(uint8 [3, S, S] tensor, None) or (None, reason)."""
    try:
        if not os.path.isfile(path):
            return None, "not a file (missing or a directory)"
        if os.path.getsize(path) == 0:
            return None, "zero-byte file"
        pixels = decode_image(Path(path), size)
    except Exception as e:   # Pillow raises many kinds on bad files; bombs raise DecompressionBombError
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return torch.from_numpy(np.array(pixels, np.uint8)).permute(2, 0, 1).contiguous(), None


def _identity(x):
    return x


class _Files(torch.utils.data.Dataset):
    """Item j = batch j of files: (start, [(index, path, image or None, reason)])."""

    def __init__(self, paths: list[tuple[int, str]], size: int, batch_size: int):
        self.paths, self.size, self.batch_size = paths, size, batch_size

    def __len__(self) -> int:
        return (len(self.paths) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, j: int):
        part = self.paths[j * self.batch_size:(j + 1) * self.batch_size]
        return [(i, p, *_decode(p, self.size)) for i, p in part]


@dataclass
class Batch:
    images: torch.Tensor | None        # uint8 [n, 3, S, S]
    indices: np.ndarray                # int64 [n]
    labels: np.ndarray                 # int64 [n]
    paths: list[str]
    skipped: list[dict]


def iter_input_batches(entries: list, image_size: int, batch_size: int, num_workers: int) -> Iterator[Batch]:
    """Batches in input order; a file run is decoded (optionally by DataLoader workers) per batch."""
    run: list[tuple[int, str]] = []

    def flush():
        if not run:
            return
        files = _Files(list(run), image_size, batch_size)
        run.clear()
        loader = (iterate(torch.utils.data.DataLoader(files, batch_size=None, shuffle=False, num_workers=num_workers,
                                                      collate_fn=_identity, worker_init_fn=ignore_stop_signals))
                  if num_workers > 0 else (files[j] for j in range(len(files))))   # workers: see byol/stopping.py
        for items in loader:
            ok = [it for it in items if it[2] is not None]
            skipped = [{"index": i, "path": p, "reason": why} for i, p, im, why in items if im is None]
            yield Batch(torch.stack([it[2] for it in ok]) if ok else None,
                        np.array([it[0] for it in ok], np.int64), np.full(len(ok), -1, np.int64),
                        [it[1] for it in ok], skipped)

    index = 0
    for entry in entries:
        if isinstance(entry, SplitInput):
            yield from flush()
            ds = entry.dataset
            for a in range(0, len(ds), batch_size):
                b = min(a + batch_size, len(ds))
                images, labels, rel = read_rows(ds, a, b)
                names = rel if rel is not None else [str(i) for i in range(a, b)]
                yield Batch(images, np.arange(entry.offset + a, entry.offset + b, dtype=np.int64),
                            np.asarray(labels, np.int64), [f"{SPLIT_PREFIX}{entry.name}/{n}" for n in names], [])
            index += len(ds)
        else:
            run.append((index, entry))
            index += 1
    yield from flush()


# ------------------------------------------------------------------------------------ writers
def generate(checkpoint, inputs: list[str], out, fmt: str = "store", head: str | None = None,
             strict: bool = False, batch_size: int = 256, trust_checkpoint: bool = False,
             overrides=(), device: str = "auto", num_workers: int = 0, rows_per_shard: int = 10_000,
             overwrite: bool = False, progress: bool = True) -> dict:
    """Embed `inputs` with the encoder of `checkpoint` and write them to `out`; returns the summary."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if int(batch_size) < 1 or int(rows_per_shard) < 1:
        raise ConfigError("--batch-size and --rows-per-shard must be >= 1")
    if not inputs:
        raise ConfigError("give at least one --input (image, folder, list .txt or split:NAME)")
    encoder, cfg = load_source(checkpoint, list(overrides), None, trust_checkpoint)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder.to(torch.device(device))

    head_model, head_dims = None, None
    if head is not None:
        from byol.evaluate.head_file import load_head
        from byol.evaluate.heads import head_outputs
        head_model, head_meta = load_head(head)
        if int(head_meta["in_dim"]) != encoder.dim:
            raise ConfigError(f"--head '{head}' takes {head_meta['in_dim']}-d inputs but the encoder gives "
                              f"{encoder.dim}-d vectors; use the head trained on this encoder's features")
        theirs = (head_meta.get("store_attrs") or {}).get("checkpoint_sha256")
        if theirs and theirs != encoder.checkpoint_sha256:
            log.warning("--head was trained on features of another checkpoint (sha256 %s...); its outputs "
                        "may be meaningless here", str(theirs)[:12])
        head_dims = (head_model.hidden_width, head_model.n_classes, head_model.classes.tolist())

    entries, offset = [], 0
    for item in expand_inputs(inputs):
        if item.startswith(SPLIT_PREFIX):
            from byol.data import build_dataset
            name = item[len(SPLIT_PREFIX):]
            cfg.data.split = name
            entries.append(SplitInput(name, build_dataset(cfg.data, encoder.image_size, name), offset))
            offset += len(entries[-1])
        else:
            entries.append(item)
            offset += 1
    n_inputs = offset
    if n_inputs == 0:
        raise DataError(f"no images found in --input {' '.join(map(str, inputs))} (folders are searched for "
                        f"{' '.join(EXTENSIONS)} files)")

    base = out_base(Path(out), fmt)
    check_out(base, fmt, overwrite)
    attrs, settings = encoder.provenance(cfg, "float32", rows_per_shard)
    attrs.update(dataset="latent-inputs", inputs=[str(i) for i in inputs], head=str(head) if head else None)
    settings["inputs"] = attrs["inputs"]
    if fmt == "store":
        writer = StoreOut(base, encoder.dim, attrs, settings, int(rows_per_shard), head_dims)
        report = base / "skipped.json"
    elif fmt == "npy":
        writer = NpyOut(base, n_inputs, encoder.dim, head_dims)
        report = Path(f"{base}.skipped.json")
    else:
        writer = CsvOut(base, encoder.dim, head_dims)
        report = Path(f"{base}.skipped.json")

    skipped, written, pending = [], 0, []

    def embed(rows: int) -> int:
        """Embed and write the first `rows` pending images (whole batches of the readable ones, so the
        rows go through the encoder in the same groups as `byol.extract` with the same --batch-size)."""
        images = torch.cat([b.images for b in pending])
        labels, indices = np.concatenate([b.labels for b in pending]), np.concatenate([b.indices for b in pending])
        paths = [p for b in pending for p in b.paths]
        emb = encoder.embed(images[:rows])
        outs = head_outputs(head_model, emb) if head_model is not None else None
        writer.write(emb, labels[:rows], indices[:rows], paths[:rows], outs)
        pending.clear()
        if rows < len(images):
            pending.append(Batch(images[rows:], indices[rows:], labels[rows:], paths[rows:], []))
        return rows

    bar = tqdm(total=n_inputs, unit="img", desc="latent", dynamic_ncols=True, disable=not progress)
    try:
        # SIGINT/SIGTERM/SIGUSR1 (to this process or its whole group, decoding workers included):
        # stop before the next batch; writer.abort() keeps finished shards and removes the rest.
        finished = False
        with StopSignals() as stop:
            for batch in iter_input_batches(entries, encoder.image_size, int(batch_size), int(num_workers)):
                if stop.signum:
                    break
                skipped += batch.skipped
                for s in batch.skipped:
                    log.warning("skipped '%s': %s", s["path"], s["reason"])
                if batch.images is not None and len(batch.images):
                    pending.append(batch)
                    while sum(len(b.paths) for b in pending) >= batch_size:
                        written += embed(int(batch_size))
                bar.update(len(batch.paths) + len(batch.skipped))
            else:   # every input read: finish, even if a signal came in meanwhile
                if pending:
                    written += embed(sum(len(b.paths) for b in pending))
                writer.close()
                finished = True
        if not finished:
            writer.abort()
            kept = (f"{len(writer.entries)} finished shards are kept in {base} (no manifest: rerun with "
                    f"--overwrite to write it whole)" if fmt == "store" else "the partial output was removed "
                    "(rerun the same command)")
            raise Interrupted(f"interrupted ({signal_name(stop.signum)}) after {written} of {n_inputs} inputs; "
                              f"{kept}", stop.signum)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    report.write_text(json.dumps({"n_skipped": len(skipped), "skipped": skipped}, indent=2), encoding="utf-8")

    outputs = {"store": [str(base)], "npy": [f"{base}.npy", f"{base}.paths.txt"], "csv": [f"{base}.csv"]}[fmt]
    if fmt == "npy" and head_dims is not None:
        outputs += [f"{base}.{n}.npy" for n in HEAD_FIELDS] + [f"{base}.head_classes.json"]
    summary = {"n_inputs": n_inputs, "n_written": written, "n_skipped": len(skipped), "dim": encoder.dim,
               "out": str(base), "format": fmt, "outputs": outputs, "skipped_report": str(report),
               "encoder": encoder.name, "head": str(head) if head else None,
               "head_hidden_dim": head_dims[0] if head_dims else None, "device": str(encoder.device)}
    if strict and skipped:
        names = ", ".join(s["path"] for s in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        raise DataError(f"--strict: {len(skipped)} of {n_inputs} inputs could not be read as images: {names} "
                        f"(reasons in {report})")
    return summary


def build_parser(doc: str | None = None, prog: str = "python latent_eval/generate_latent_out.py"):
    import argparse
    from byol.cli import (add_checkpoint_arguments, add_device_arguments, add_loader_arguments, add_override_arguments,
                          add_overwrite_argument, add_progress_argument)
    parser = argparse.ArgumentParser(prog=prog, description=doc or __doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="encoder.pt, checkpoints/*.pt, a torchvision ResNet or an imported layout")
    parser.add_argument("--input", nargs="+", required=True, action="extend", metavar="PATH",
                        help="image files, folders, .txt lists, split:NAME (repeatable)")
    parser.add_argument("--out", required=True, help="store: a directory; npy/csv: the file name stem")
    parser.add_argument("--format", choices=FORMATS, default="store")
    parser.add_argument("--head", default=None, help="a head file from eval/load_and_train.py (.safetensors): "
                        "also write hidden, probs, pred")
    parser.add_argument("--strict", action="store_true", help="exit 2 naming any input that is not an image")
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    add_loader_arguments(parser)
    add_device_arguments(parser)
    add_override_arguments(parser, "config overrides for split: inputs, e.g. data.root=/data (not right after "
                           "--input, which would take them as inputs)", set_alias=True)
    add_checkpoint_arguments(parser)
    add_overwrite_argument(parser, "replace an earlier output at --out")
    add_progress_argument(parser)
    return parser


def main(argv=None, doc: str | None = None, prog: str = "python latent_eval/generate_latent_out.py") -> None:
    from byol.cli import check_overrides, looks_like_override, parse_arguments, run_command, usable_device
    args = parse_arguments(build_parser(doc, prog), argv)

    def run() -> dict:
        overrides = check_overrides(args.overrides)
        # --input takes every word up to the next flag, so `--input a.jpg data.root=/d` makes the override an input
        stray = next((item for item in args.input if looks_like_override(item) and not Path(item).exists()), None)
        if stray is not None:
            raise ConfigError(f"--input {stray!r} is a config override, not an input: put it before --input or "
                              f"after another flag, or write --set {stray}")
        device = usable_device(args.device)
        workers = 0 if args.num_workers is None else args.num_workers   # automatic: decode in this process
        return generate(args.checkpoint, args.input, args.out, args.format, args.head, args.strict,
                        args.batch_size, args.trust_checkpoint, overrides, device, workers,
                        args.rows_per_shard, args.overwrite, not args.no_progress)

    run_command(run)
