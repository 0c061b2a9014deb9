"""Where should `byol duplicates` draw the line? Similarity of planted near-copies vs distinct images.

    python benchmarks/duplicate_threshold.py --checkpoint runs/cifar/encoder.pt \\
        --images /data/cifar10/test --store runs/cifar/features/test
    python benchmarks/duplicate_threshold.py --checkpoint pixels --set "data_transforms.input_shape=(32,32,3)" \\
        --images /data/cifar10/test --store PIXEL_STORE       # byol latent --checkpoint pixels --set ... --input FOLDER

Takes --n images of the folder (evenly spaced in sorted order), writes three near copies of each
  up2x-q75      saved at twice the size as JPEG quality 75 (a re-upload, an export at another size)
  q50           re-saved as JPEG quality 50 (heavy recompression)
  shrink-q50    shrunk to 3/4 and back (bilinear), then JPEG quality 50 (a thumbnail round trip)
embeds originals and copies with `byol latent` (the same code as extraction), and prints, for
plain cosine and for the cosine of deviations from the store's mean row (`byol duplicates`'s
default) and thresholds 0.90 ... 0.995:
  kept <kind>      share of copies whose similarity to their original is >= t (want ~100%)
  distinct         share of the store's rows whose nearest *other* row is >= t: an upper bound on
                   false pairs (real datasets hold some true near-duplicates: CIFAR-10 does)
then one JSON line. --store must hold the folder's images' features, extracted with --checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from byol.base.knn import prepare_rows  # noqa: E402
from byol.data.image_folder import find_images  # noqa: E402
from byol.extract.latent_command import generate  # noqa: E402
from byol.search.nearest import mean_row, nearest  # noqa: E402
from byol.store import FeatureStore  # noqa: E402

THRESHOLDS = (0.90, 0.95, 0.97, 0.98, 0.985, 0.99, 0.995)


def near_copy(src: Path, dst: Path, kind: str) -> None:
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    if kind == "up2x-q75":
        rgb.resize((2 * w, 2 * h), Image.Resampling.BICUBIC).save(dst, quality=75)
    elif kind == "q50":
        rgb.save(dst, quality=50)
    else:
        small = rgb.resize((max(1, w * 3 // 4), max(1, h * 3 // 4)), Image.Resampling.BILINEAR)
        small.resize((w, h), Image.Resampling.BILINEAR).save(dst, quality=50)


KINDS = ("up2x-q75", "q50", "shrink-q50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", required=True, help="an image folder (its files are the originals)")
    parser.add_argument("--store", required=True, help="a store of the folder's images, for the distinct side")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="config overrides for the embedding, e.g. data_transforms.input_shape=(32,32,3) "
                             "with --checkpoint pixels")
    args = parser.parse_args()
    files = [p for p, _ in find_images([Path(args.images)], Path(args.images))]
    chosen = [files[i] for i in np.linspace(0, len(files) - 1, args.n).astype(int)]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        copies = []
        for kind in KINDS:
            for i, src in enumerate(chosen):
                copies.append(work / f"{kind}-{i:05d}.jpg")
                near_copy(src, copies[-1], kind)
        generate(args.checkpoint, [str(p) for p in chosen + copies], work / "store", progress=False, device="cpu",
                 overrides=args.overrides)
        y = FeatureStore.open(work / "store").to_array()
    store = FeatureStore.open(args.store)
    own = np.arange(store.n_rows)
    result = {}
    for centred in (False, True):
        mean = mean_row(store) if centred else np.zeros(store.dim, np.float32)
        x = prepare_rows(y - mean, "cosine")
        copy_sim = {kind: (x[:args.n] * x[args.n * (j + 1):args.n * (j + 2)]).sum(axis=1) for j, kind in enumerate(KINDS)}
        nn_sim = np.concatenate([nearest(store, store.take(own[lo:lo + 4096]), 1, own[lo:lo + 4096],
                                         center=mean if centred else None)[0][:, 0]
                                 for lo in range(0, store.n_rows, 4096)])
        name = "centred" if centred else "plain"
        print(f"\n{name} cosine: copies' median similarity to their original " +
              ", ".join(f"{kind} {np.median(s):.4f}" for kind, s in copy_sim.items()) +
              f"; distinct rows' nearest other row: median {np.median(nn_sim):.4f}")
        print(f"{'threshold':>10}" + "".join(f"{'kept ' + kind:>17}" for kind in KINDS) + f"{'distinct':>10}")
        table = {}
        for t in THRESHOLDS:
            kept = {kind: float((s >= t).mean()) for kind, s in copy_sim.items()}
            table[str(t)] = {**{k: round(v, 4) for k, v in kept.items()}, "distinct": round(float((nn_sim >= t).mean()), 4)}
            print(f"{t:>10.3f}" + "".join(f"{v:>16.1%} " for v in kept.values()) + f"{(nn_sim >= t).mean():>9.2%}")
        result[name] = table
    print(json.dumps({"checkpoint": args.checkpoint, "n_copies": args.n, "store_rows": store.n_rows, **result}))


if __name__ == "__main__":
    main()
