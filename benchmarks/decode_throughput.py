"""Images/s one data-loading worker decodes from a folder of full-size JPEGs, per decoder.

    python benchmarks/decode_throughput.py                         # 500x375 and 2048x1536 photos, 96 and 224 px
    python benchmarks/decode_throughput.py --photo-sizes 4032x3024 --view-sizes 224 --n-images 40

A DataLoader worker is one process with one thread (torch sets 1 intra-op thread in workers), so
each decoder runs here single-threaded over the same files, rounds alternated, and the best round
is kept (noise on a shared machine only slows a run down). Decoders, each ending in uint8 [3, S, S]
(shorter side resized to S, centre crop), as `ImageFolder` yields:

  pillow-draft   `byol.data.image_folder.decode_image`, what training and extraction use: Pillow
                 with JPEG draft mode (libjpeg's DCT scaling by 1/2, 1/4, 1/8 to >= S) + bilinear resize
  pillow-full    the same without draft mode (full decode, then resize): what draft mode saves
  torchvision    `torchvision.io.decode_jpeg` (libjpeg-turbo, full decode) + antialiased resize

The photos are synthetic but photo-like for the codec (smooth colour fields, edges and sensor-like
noise, quality 90, 4:2:0), written to a temp folder. Workers needed to feed a GPU = the GPU's
training images/s / the per-worker rate (benchmarks/gpu_check.py prints it for the GPU it runs on).
Prints a Markdown table, then one JSON object as its last line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, uninstalled

from byol.data.image_folder import decode_image  # noqa: E402


def write_photos(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """n photo-like JPEGs of width x height: low-frequency colour fields + edges + noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 6, 8)).astype(np.float32))
        field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        x0 = int(rng.integers(0, width // 2))
        field[:, :, x0:x0 + width // 4] *= 0.5                      # a hard edge, as objects have
        pixels = field.permute(1, 2, 0).numpy() + rng.normal(0, 10, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        path = folder / f"{i:05d}.jpg"
        image.save(path, quality=90, subsampling=2)
        paths.append(path)
    return paths


def pillow_full(path: Path, size: int) -> torch.Tensor:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    width, height = rgb.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    return torch.from_numpy(np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR, box=box))).permute(2, 0, 1)


def torchvision_decode(path: Path, size: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    image = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)          # uint8 [3, H, W]
    height, width = image.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, top:top + side, left:left + side].unsqueeze(0).float()
    out = F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


DECODERS = {
    "pillow-draft": lambda path, size: torch.from_numpy(decode_image(path, size).copy()).permute(2, 0, 1),
    "pillow-full": pillow_full,
    "torchvision": torchvision_decode,
}


def rate(decoder, paths: list[Path], size: int) -> float:
    decoder(paths[0], size)            # warm-up: lazy imports and first-call initialisation stay untimed
    start = time.perf_counter()
    for path in paths:
        out = decoder(path, size)
        assert out.shape == (3, size, size) and out.dtype == torch.uint8
    return len(paths) / (time.perf_counter() - start)


def measure(paths: list[Path], view_sizes: list[int], rounds: int) -> dict:
    """{view size: {decoder: best images/s of `rounds` alternated rounds}} on one thread."""
    torch.set_num_threads(1)
    best: dict = {size: {name: 0.0 for name in DECODERS} for size in view_sizes}
    for _ in range(rounds):
        for size in view_sizes:
            for name, decoder in DECODERS.items():
                best[size][name] = max(best[size][name], rate(decoder, paths, size))
    return best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo-sizes", nargs="+", default=["500x375", "2048x1536"], help="WIDTHxHEIGHT")
    ap.add_argument("--view-sizes", nargs="+", type=int, default=[96, 224])
    ap.add_argument("--n-images", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for photo in a.photo_sizes:
            width, height = (int(v) for v in photo.lower().split("x"))
            paths = write_photos(Path(tmp) / photo, a.n_images, width, height)
            kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
            for size, by_decoder in measure(paths, a.view_sizes, a.rounds).items():
                results.append({"photo": photo, "jpeg_kb": round(kb, 1), "view": size,
                                **{name: round(v, 1) for name, v in by_decoder.items()}})
    print("| photo | JPEG KB | view px | " + " | ".join(f"{name} img/s" for name in DECODERS) + " | draft vs torchvision |")
    print("|---|---|---|" + "---|" * (len(DECODERS) + 1))
    for r in results:
        print(f"| {r['photo']} | {r['jpeg_kb']} | {r['view']} | " + " | ".join(f"{r[n]:.1f}" for n in DECODERS)
              + f" | {r['pillow-draft'] / r['torchvision']:.2f}x |")
    summary = {"per_worker_img_per_s": results, "threads": 1, "n_images": a.n_images, "rounds": a.rounds}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
