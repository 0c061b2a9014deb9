"""Look at the views BYOL trains on: a PNG grid of (original, view 1, view 2) for a few images.

    python benchmarks/view_grid.py --data /tmp/cifar10 --size 32 --out /tmp/views32.png
    python benchmarks/view_grid.py --data /tmp/cifar10 --size 16 --out /tmp/views16.png

Both of our data paths are drawn: "folder" (crops cut in the DataLoader workers from the decoded
file: byol/data/crops.py, what `data.name=folder` trains on) and "tensor" (crops cut on the device
from a uint8 batch: STL-10 and the digits). The views are un-normalised back to [0, 1] so the colour
range is what the encoder sees before normalisation; the per-view statistics are printed (mean and
std of each channel after normalisation: about 0 and 1 when the normalisation fits the images).
Every view is upscaled by nearest-neighbour to --zoom px so single pixels stay visible.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byol.data.augment import IMAGENET_MEAN, IMAGENET_STD, BYOLViews  # noqa: E402
from byol.data.crops import FolderCropViews  # noqa: E402
from byol.data.image_folder import ImageFolder  # noqa: E402


def to_image(x: torch.Tensor, zoom: int) -> np.ndarray:
    """float [3, S, S] normalised -> uint8 [zoom, zoom, 3]."""
    m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (x * s + m).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return np.asarray(Image.fromarray(pixels).resize((zoom, zoom), Image.Resampling.NEAREST))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="image folder with a train/ subfolder")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--min-scale", type=float, default=0.08)
    ap.add_argument("--zoom", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    folder = ImageFolder(args.data, "train", args.size)
    pick = np.random.default_rng(args.seed).choice(len(folder), args.rows, replace=False)
    views = BYOLViews(args.size, min_scale=args.min_scale)
    g = torch.Generator().manual_seed(args.seed)
    originals = torch.stack([folder.load(int(i)) for i in pick])                  # uint8 [R, 3, S, S]
    tensor_v1, tensor_v2 = views(originals, g)
    crops = FolderCropViews(folder, args.size, args.min_scale, args.seed)
    cut = torch.stack([crops[int(i)][0]["global"] for i in pick])                  # uint8 [R, 2, 3, S, S]
    (folder_v1, folder_v2), _ = views.views({"global": cut}, g)
    for name, v in (("tensor view 1", tensor_v1), ("tensor view 2", tensor_v2),
                    ("folder view 1", folder_v1), ("folder view 2", folder_v2)):
        print(f"{name}: channel mean {[round(float(a), 2) for a in v.mean((0, 2, 3))]}, "
              f"std {[round(float(a), 2) for a in v.std((0, 2, 3))]}")
    from byol.data.augment import normalize
    plain = normalize(originals.float() / 255)
    rows = []
    for r in range(args.rows):
        cells = [plain[r], folder_v1[r], folder_v2[r], tensor_v1[r], tensor_v2[r]]
        gap = np.full((args.zoom, 4, 3), 255, np.uint8)
        rows.append(np.concatenate(sum(([to_image(c, args.zoom), gap] for c in cells), [])[:-1], axis=1))
    grid = np.concatenate(sum(([row, np.full((4, row.shape[1], 3), 255, np.uint8)] for row in rows), [])[:-1])
    Image.fromarray(grid).save(args.out)
    print(f"wrote {args.out}: columns = original, folder view 1, folder view 2, tensor view 1, tensor view 2")


if __name__ == "__main__":
    main()
