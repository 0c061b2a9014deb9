"""`byol search`: the nearest store rows of any images (or of store rows), by cosine similarity.

    byol search photo.jpg more/ --store runs/my/features/train --k 10 --out found/
    byol search row:0 row:17 --store runs/my/features/train --out found/     # rows of the store itself
    python -m byol.search query.jpg --store STORE --out OUT                   # the same command

Queries are those of `byol.search.queries` (files, folders, LIST.txt, split:NAME as `byol latent`
takes them, and row:N); image queries are embedded by the encoder the store was extracted with
(the checkpoint it records, or --checkpoint), and a checkpoint that embeds otherwise (another
encoder, image size or normalisation) is refused in one line. The store is streamed in blocks through
the project's one kNN core (byol.base.knn.running_topk), so memory does not grow with its size.

Writes:
  OUT/neighbors.jsonl   one line per readable query, in the order given:
                        {"query": PATH or "row:N", "neighbors": [{"path": PATH, "similarity": S}, ...]}
                        best first ("item": N instead of "path" where the store has no paths)
  OUT/neighbors.png     the first --sheet-queries queries, each followed by its neighbours,
                        similarity (and class, where the store has class names) under each
  OUT/skipped.json      queries that are not images, with the reason (as byol latent)
The last stdout line is a JSON summary (n_queries, n_skipped, k, store, outputs, seconds).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from byol.base.atomic import PendingFile, atomic_write_text
from byol.base.errors import ConfigError
from byol.command_line import (add_checkpoint_arguments, add_device_arguments, add_overwrite_argument,
                               parse_arguments, run_command, usable_device)
from byol.search.contact_sheet import draw_sheet, short
from byol.search.nearest import BLOCK_ROWS, nearest, require_rows
from byol.search.queries import load_store_encoder, query_batches, split_queries
from byol.search.store_images import StoreImages

log = logging.getLogger("byol")

OUTPUTS = ("neighbors.jsonl", "neighbors.png", "skipped.json")


def search(queries: list[str], store_dir, out, k: int = 10, checkpoint: str | None = None,
           sheet_queries: int = 10, batch_size: int = 256, device: str = "auto", overwrite: bool = False,
           trust_checkpoint: bool = False, block_rows: int = BLOCK_ROWS) -> dict:
    """Write OUT/neighbors.jsonl, OUT/neighbors.png and OUT/skipped.json; return the summary."""
    began = time.perf_counter()
    if not queries:
        raise ConfigError("give at least one query: image files, folders, a list .txt, split:NAME or row:N")
    if k < 1:
        raise ConfigError(f"--k must be >= 1, got {k}")
    out, store = open_store_for(out, OUTPUTS, overwrite, store_dir)
    parsed = split_queries(queries, store.n_rows)
    encoder = cfg = None
    if any(not isinstance(q, int) for q in parsed):
        encoder, cfg = load_store_encoder(store, checkpoint, usable_device(device), trust_checkpoint)
    images = StoreImages(store)
    sheet, skipped, n_searched = [], [], 0
    lines = PendingFile(out / "neighbors.jsonl")       # under its name only once complete
    with lines.guarded(), open(lines.tmp, "w", encoding="utf-8") as jsonl:
        for batch in query_batches(store, parsed, encoder, cfg, batch_size):
            skipped += batch.skipped
            for s in batch.skipped:
                log.warning("skipped '%s': %s", s["path"], s["reason"])
            if not batch.names:
                continue
            sims, rows = nearest(store, batch.embeddings, k, batch.own_rows, block_rows)
            found = rows >= 0
            names = iter(images.names(rows[found]))          # one read of the store for the whole batch
            for i, name in enumerate(batch.names):
                neighbours = [dict(next(names), similarity=round(float(s), 6)) for s in sims[i][found[i]]]
                jsonl.write(json.dumps({"query": name, "neighbors": neighbours}) + "\n")
                if len(sheet) < sheet_queries:              # (query image or row, its rows, captions)
                    query = batch.own_rows[i] if batch.images is None else batch.images[i]
                    sheet.append((query, rows[i][found[i]], [short(name)] + [f"{s:.3f}" for s in sims[i][found[i]]]))
            n_searched += len(batch.names)
    lines.commit()
    draw_sheet(_sheet_images(images, sheet), out / "neighbors.png", f"Queries (black) and their {k} nearest rows of {store.split_dir}, "
               f"cosine similarity (and class) under each")
    atomic_write_text(out / "skipped.json", json.dumps({"n_skipped": len(skipped), "skipped": skipped}, indent=2))
    return {"n_queries": n_searched, "n_skipped": len(skipped), "k": k, "store": str(store.split_dir),
            "store_rows": store.n_rows, "outputs": [str(out / name) for name in OUTPUTS],
            "seconds": round(time.perf_counter() - began, 2)}


def _sheet_images(images: StoreImages, sheet: list) -> list:
    """(query, neighbour rows, captions) -> (thumbnails, captions), the store read once for them all."""
    wanted = [np.atleast_1d(q) for q, _, _ in sheet if np.ndim(q) == 0] + [r for _, r, _ in sheet]
    rows = np.unique(np.concatenate(wanted)) if wanted else np.empty(0, np.int64)
    thumbs = dict(zip(rows.tolist(), images.thumbnails(rows)))
    classes = dict(zip(rows.tolist(), images.class_names(rows)))
    return [([thumbs[int(q)] if np.ndim(q) == 0 else q, *(thumbs[int(r)] for r in found)],
             [captions[0], *(f"{c} {classes[int(r)]}".strip() for c, r in zip(captions[1:], found))])
            for q, found, captions in sheet]


def open_store_for(out, outputs: tuple, overwrite: bool, store_dir):
    """(--out as a Path, the store with its rows), for both search commands: earlier results in --out
    are replaced only when asked, and the store is checked before any work."""
    from byol.store import FeatureStore
    out = Path(out)
    found = [name for name in outputs if (out / name).is_file()]
    if found and not overwrite:
        raise ConfigError(f"--out '{out}' already holds {found[0]}; choose another --out or pass --overwrite")
    store = FeatureStore.open(store_dir)
    require_rows(store)
    return out, store


def build_parser(prog: str = "python -m byol.search") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries", nargs="+", metavar="QUERY",
                        help="image files, folders, .txt lists, split:NAME, or row:N (a row of the store)")
    parser.add_argument("--store", required=True, help="a feature-store split directory (…/features/train)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--checkpoint", default=None,
                        help="the encoder for image queries (default: the checkpoint the store records)")
    parser.add_argument("--sheet-queries", type=int, default=10, help="queries drawn in neighbors.png (default 10)")
    parser.add_argument("--batch-size", type=int, default=256, help="queries embedded and searched at once")
    add_device_arguments(parser)
    add_checkpoint_arguments(parser)
    add_overwrite_argument(parser, "replace earlier results in --out")
    return parser


def main(argv=None, prog: str = "python -m byol.search") -> None:
    args = parse_arguments(build_parser(prog), argv)
    run_command(lambda: search(args.queries, args.store, args.out, args.k, args.checkpoint, args.sheet_queries,
                               args.batch_size, args.device, args.overwrite, args.trust_checkpoint))
