"""`byol duplicates`: groups of (near-)duplicate images in a feature store.

    byol duplicates runs/my/features/train --out dups/                 # default threshold
    byol duplicates STORE --threshold 0.9 --out dups/                   # looser: more, less similar pairs
    python -m byol.search.duplicates_command STORE --out OUT            # the same command

Every row is compared with every other (exact; the store streamed in blocks through the one kNN
core, byol.base.knn.running_topk, so memory does not grow with the store) by the cosine similarity
of the rows' deviations from the store's mean row (--no-center: of the rows themselves); each row
keeps its --max-per-item nearest rows at or above --threshold, never itself, and the pairs are
grouped around leaders: every member of a group is at or above the threshold to its first member
(byol.search.nearest.group_pairs; look-alikes are not chained into one group).

The default threshold, 0.99, was measured (benchmarks/duplicate_threshold.py; docs/stages/search.md)
with a BYOL ResNet-18 trained on CIFAR-10 (32 px): 98% of copies saved at twice the size as JPEG
quality 75 and 72% of copies re-saved as JPEG quality 50 stayed at or above it, while 0.13% of the
10,000 test images had their nearest other image there (CIFAR-10 holds a few true near-duplicates).
Harsher copies (shrunk to 3/4 and back) fall below: lower the threshold to find them, and expect
more distinct look-alikes. A threshold belongs to an encoder: for raw pixels (byol latent
--checkpoint pixels) 0.95 kept 99.8% of the JPEG-50 copies and paired 0.55% of distinct test images
(but on all 50,000 training images it grouped plain backgrounds by the dozen); a random network's
copies sit near 0.9. duplicates.json lists the quantiles of every row's nearest-row
similarity, and the sheet shows what a threshold catches: check both, then adjust.

Writes:
  OUT/duplicates.json   {"threshold": T, "groups": [[PATH, PATH, ...], ...], ...} largest group first
                        (dataset item numbers where the store has no paths; the leader first), with
                        each group's rows, the others' similarity to the leader, the pair count,
                        the settings, and
                        nearest_similarity_quantiles {"0.5": s, ..., "0.999": s}: half of the rows
                        have their nearest other row at <= the "0.5" value, and so on
  OUT/duplicates.png    the first --sheet-groups groups, one per row (first member black, the others
                        with their similarity to it)
The last stdout line is a JSON summary (n_rows, n_pairs, n_groups, n_rows_in_groups, seconds, ...).
"""
from __future__ import annotations

import argparse
import json
import time

from byol.base.atomic import atomic_write_text
from byol.base.errors import ConfigError
from byol.command_line import add_overwrite_argument, parse_arguments, run_command
from byol.search.contact_sheet import draw_sheet, short
from byol.search.nearest import BLOCK_ROWS, MAX_PER_ITEM, duplicate_pairs, group_pairs
from byol.search.search_command import open_store_for
from byol.search.store_images import StoreImages

DEFAULT_THRESHOLD = 0.99
OUTPUTS = ("duplicates.json", "duplicates.png")
SHEET_MEMBERS = 12          # members drawn per group on the sheet


def find_duplicates(store_dir, out, threshold: float = DEFAULT_THRESHOLD, max_per_item: int = MAX_PER_ITEM,
                    sheet_groups: int = 10, overwrite: bool = False, center: bool = True,
                    block_rows: int = BLOCK_ROWS) -> dict:
    """Write OUT/duplicates.json and OUT/duplicates.png; return the summary."""
    began = time.perf_counter()
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold is a cosine similarity in [-1, 1], got {threshold}")
    if max_per_item < 1:
        raise ConfigError(f"--max-per-item must be >= 1, got {max_per_item}")
    out, store = open_store_for(out, OUTPUTS, overwrite, store_dir)
    found = duplicate_pairs(store, threshold, max_per_item, center, block_rows)
    groups = group_pairs(found.pairs, found.similarity)
    images = StoreImages(store)
    flat = iter(next(iter(who.values())) for who in images.names([r for g in groups for r in g["rows"]]))
    names = [[next(flat) for _ in g["rows"]] for g in groups]       # one read of the store for all groups
    atomic_write_text(out / "duplicates.json", json.dumps({
        "threshold": threshold, "groups": names, "group_rows": [g["rows"] for g in groups],
        "group_similarity": [[round(x, 6) for x in g["similarity"]] for g in groups],
        "n_pairs": len(found.pairs), "metric": "cosine of the rows' deviations from the store's mean row" if center else
        "cosine", "max_per_item": max_per_item, "store": str(store.split_dir),
        "nearest_similarity_quantiles": found.nearest_quantiles(),
        "names_are": "paths" if store.has_paths else "dataset items"}, indent=1) + "\n")
    sheet = [(list(images.thumbnails(g["rows"][:SHEET_MEMBERS])),
              [short(str(n[0]))] + [f"{s:.3f}" for s in g["similarity"][:SHEET_MEMBERS - 1]])
             for g, n in zip(groups[:sheet_groups], names)]
    draw_sheet(sheet, out / "duplicates.png", f"{len(groups)} groups of near-duplicates at cosine >= {threshold} "
               f"in {store.split_dir.name}; similarity to each group's first image under each")
    return {"n_rows": store.n_rows, "threshold": threshold, "n_pairs": len(found.pairs), "n_groups": len(groups),
            "n_rows_in_groups": sum(len(g["rows"]) for g in groups), "store": str(store.split_dir),
            "nearest_similarity_quantiles": found.nearest_quantiles(),
            "outputs": [str(out / name) for name in OUTPUTS], "seconds": round(time.perf_counter() - began, 2)}


def build_parser(prog: str = "python -m byol.search.duplicates_command") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", metavar="STORE", help="a feature-store split directory (…/features/train)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"cosine similarity at or above which two rows are near-duplicates (default "
                             f"{DEFAULT_THRESHOLD}, measured: see above)")
    parser.add_argument("--max-per-item", type=int, default=MAX_PER_ITEM,
                        help=f"near copies kept per row (default {MAX_PER_ITEM}: a row with more copies is grouped "
                             "with its nearest ones)")
    parser.add_argument("--sheet-groups", type=int, default=10, help="groups drawn in duplicates.png (default 10)")
    parser.add_argument("--no-center", action="store_true",
                        help="plain cosine of the rows (default: of their deviations from the store's mean row)")
    add_overwrite_argument(parser, "replace earlier results in --out")
    return parser


def main(argv=None, prog: str = "python -m byol.search.duplicates_command") -> None:
    args = parse_arguments(build_parser(prog), argv)
    run_command(lambda: find_duplicates(args.store, args.out, args.threshold, args.max_per_item,
                                        args.sheet_groups, args.overwrite, not args.no_center))
