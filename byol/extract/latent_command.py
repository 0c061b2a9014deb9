"""Latent vectors (the encoder's pooled features) of any images: `byol latent` and
`latent_eval/generate_latent_out.py` (commands: its docstring). The same run as `byol.extract.extract_command`
(byol/extract/embed_loop.py: `EncoderSource.embed`, eval mode, fp32, ImageNet normalisation at the
checkpoint's image size, the same groups of --batch-size rows within each shard), other inputs and sinks.

Inputs, in the order given (each kept in its own order):
  image file       any Pillow-readable file, whatever its extension, decoded as image-folder extraction
                   decodes (EXIF-upright, RGB, shorter side to the checkpoint's image size, centre crop)
  folder           every image file below it (extensions of byol.data.image_folder.EXTENSIONS, hidden
                   files ignored), sorted by relative path exactly as an image-folder extraction sorts
  LIST.txt         one path per line (blank lines and # lines ignored), relative to the list's folder
  split:NAME       a split of the dataset in the checkpoint's config (split:test); change its data
                   settings with --set data.root=... (as `byol.extract.extract_command` overrides)

Outputs (`--format`):
  store (default)  OUT/ is one split directory of the feature store (byol/store/): OUT/shard-NNNNN.h5 +
                   OUT/manifest.json. Row fields: embeddings; labels (-1 for files, the dataset label
                   for split:); indices (the input's position among all inputs, skipped ones counted);
                   paths (as given, folder files joined to the folder; `split:NAME/<relative path or
                   row>`). With --head each shard also holds head_hidden [N, h] and head_probs [N, C]
                   float32, head_pred [N] int64 and the attribute head_classes (JSON list: each probs
                   column's original label); read them with h5py (`FeatureStore` ignores them).
  npy              OUT.npy [n_written, dim] float32 + OUT.paths.txt (one path a line, row order); with
                   --head also OUT.head_hidden.npy, OUT.head_probs.npy, OUT.head_pred.npy, OUT.head_classes.json.
  csv              OUT.csv: columns path, label, f0..f{dim-1}; with --head also h0..h{h-1}, p_<class>
                   per class and pred.

Inputs that cannot be decoded (zero-byte files, text named .jpg, truncated files, images over Pillow's
decompression-bomb limit, missing files) are skipped and listed with the reason in OUT/skipped.json
(store) or OUT.skipped.json (npy, csv); --strict then exits 2 naming them (outputs and report still
written). Memory stays bounded: rows go to disk as they come; npy and csv files appear under their
names once complete. A store stopped midway keeps its finished shards, and the same command resumes
from them to the store an uninterrupted run writes. The last stdout line is a JSON summary:
n_inputs, n_written, n_skipped, dim, out, format, ...
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from itertools import count
from pathlib import Path

from tqdm import tqdm

from byol.base.atomic import atomic_write_text, file_sha256
from byol.command_line import (add_checkpoint_arguments, add_device_arguments, add_loader_arguments, add_override_arguments,
                      add_overwrite_argument, add_progress_argument, check_overrides, looks_like_override,
                      parse_arguments, run_command, usable_device)
from byol.base.distributed import DeviceError, resolve_device
from byol.base.errors import ConfigError, DataError
from byol.data import build_dataset
from byol.data.batches import iter_batches
from byol.data.image_folder import EXTENSIONS
from byol.data.input_list import SPLIT_PREFIX, InputList, expand_inputs
from byol.encoders.source import load_source
from byol.evaluate.head_file import load_head_for
from byol.evaluate.heads import head_outputs
from byol.extract.embed_loop import EmbedOptions, ShardGroups, data_settings, embed_rows
from byol.extract.latent_outputs import HEAD_FIELDS, CsvOut, NpyOut, StoreOut, out_base

log = logging.getLogger("byol")

FORMATS = ("store", "npy", "csv")


def generate(checkpoint, inputs: list[str], out, fmt: str = "store", head: str | None = None,
             strict: bool = False, batch_size: int = 256, trust_checkpoint: bool = False,
             overrides=(), device: str = "auto", num_workers: int = 0, rows_per_shard: int = 10_000,
             overwrite: bool = False, progress: bool = True) -> dict:
    """Embed `inputs` with the encoder of `checkpoint` and write them to `out`; returns the summary."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    o = EmbedOptions(list(overrides), rows_per_shard, batch_size=batch_size, num_workers=num_workers or 0,
                     device=device, trust_checkpoint=trust_checkpoint, overwrite=overwrite, progress=progress)
    if not inputs:
        raise ConfigError("give at least one --input (image, folder, list .txt or split:NAME)")
    encoder, cfg = load_source(checkpoint, o.overrides, None, o.trust_checkpoint)
    try:
        encoder.to(resolve_device(o.device))
    except DeviceError as e:
        raise e.for_setting("--device", "--device ") from None
    head_model = load_head_for(head, encoder.dim, encoder.checkpoint_sha256) if head is not None else None
    items = expand_inputs(inputs)
    splits = [item[len(SPLIT_PREFIX):] for item in items if item.startswith(SPLIT_PREFIX)]
    dataset = InputList([(item, build_dataset(cfg.data, encoder.image_size, item[len(SPLIT_PREFIX):]))
                         if item.startswith(SPLIT_PREFIX) else item for item in items], encoder.image_size)
    cfg.data.split = splits[-1] if splits else cfg.data.split     # the saved config names the split embedded
    if len(dataset) == 0:
        raise DataError(f"no images found in --input {' '.join(map(str, inputs))} (folders are searched for "
                        f"{' '.join(EXTENSIONS)} files)")
    base, n = out_base(Path(out), fmt), len(dataset)
    attrs, settings = encoder.provenance(cfg, "float32", o.rows_per_shard)
    attrs.update(dataset="latent-inputs", inputs=[str(i) for i in inputs], head=str(head) if head else None)
    settings.update(inputs=attrs["inputs"], head_sha256=file_sha256(head) if head else None,   # what a resumed
                    input_list_sha256=hashlib.sha256("\n".join(items).encode()).hexdigest(),  # run must match
                    data=data_settings(cfg.data) if splits else None)
    sink = (StoreOut(base, encoder.dim, attrs, settings, o.rows_per_shard, dataset, head_model, o.overwrite)
            if fmt == "store" else (NpyOut if fmt == "npy" else CsvOut)(base, encoder.dim, head_model, o.overwrite))
    written, skipped = _run(encoder, head_model, dataset, sink, o)
    report = base / "skipped.json" if fmt == "store" else Path(f"{base}.skipped.json")
    atomic_write_text(report, json.dumps({"n_skipped": len(skipped), "skipped": skipped}, indent=2))
    if strict and skipped:
        names = ", ".join(s["path"] for s in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        raise DataError(f"--strict: {len(skipped)} of {n} inputs could not be read as images: {names} "
                        f"(reasons in {report})")
    return {"n_inputs": n, "n_written": written, "n_skipped": len(skipped), "dim": encoder.dim, "out": str(base),
            "format": fmt, "outputs": sink.outputs, "skipped_report": str(report), "encoder": encoder.name,
            "head": str(head) if head else None, "head_hidden_dim": head_model.hidden_width if head_model else None,
            "device": str(encoder.device)}


def _run(encoder, head_model, dataset: InputList, sink, o: EmbedOptions) -> tuple[int, list[dict]]:
    """Embed into `sink` the inputs it does not hold yet: (rows written in all, inputs skipped in all)."""
    start, written, skipped = sink.start, [sink.kept_rows], list(sink.skipped)   # a stopped store's; npy, csv: 0
    read = [start]

    def embed(images):
        rows = encoder.embed(images)
        written.append(len(rows))
        return rows, (dict(zip(HEAD_FIELDS, head_outputs(head_model, rows))) if head_model is not None else None)

    def batches():
        for rows in iter_batches(dataset, [(a, min(a + o.batch_size, len(dataset)))
                                           for a in range(start, len(dataset), o.batch_size)], o.num_workers):
            for s in rows.skipped:
                log.warning("skipped '%s': %s", s["path"], s["reason"])
            skipped.extend(rows.skipped)
            read[0] = rows.stop
            yield rows

    def interrupted(signal: str) -> str:
        return f"interrupted ({signal}) after {read[0]} of {len(dataset)} inputs; {sink.kept_message()}"
    bar = tqdm(total=len(dataset) - start, unit="img", desc="latent", dynamic_ncols=True, disable=not o.progress)
    groups = ShardGroups(((k, o.rows_per_shard) for k in count(len(sink.kept))), o.batch_size)
    embed_rows(embed, batches(), groups, sink, bar, interrupted)
    return sum(written), skipped


def build_parser(doc: str | None = None, prog: str = "python latent_eval/generate_latent_out.py"):
    """The flags; --help shows `doc` (the entry point's commands), then this module's reference."""
    parser = argparse.ArgumentParser(prog=prog, description=f"{doc}\n{__doc__}" if doc else __doc__,
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
    add_overwrite_argument(parser, "replace an earlier output at --out (a store stopped midway resumes without it)")
    add_progress_argument(parser)
    return parser


def main(argv=None, doc: str | None = None, prog: str = "python latent_eval/generate_latent_out.py") -> None:
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
