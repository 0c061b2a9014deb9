"""Throughput of byol.data.augment.BYOLViews: two views of a uint8 batch, on CPU or CUDA.

    python benchmarks/augment_throughput.py --batch-size 64 --size 96 --steps 20 [--device cuda]

Prints the configuration, then as its last line one JSON object with the median time per batch
(both views, parameter sampling included) and images per second.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, uninstalled
from byol.data.augment import BYOLViews  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=96, help="output side of each view")
    ap.add_argument("--input-size", type=int, default=None, help="input side (default: --size)")
    ap.add_argument("--steps", type=int, default=20, help="timed batches")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    in_size = args.input_size or args.size
    aug = BYOLViews(args.size)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, in_size, in_size), dtype=torch.uint8,
                           generator=gen).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    print(f"augment_throughput: device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"  batch={args.batch_size} input={in_size}x{in_size} uint8 -> 2 views of {args.size}x{args.size} "
          f"float32, blur kernel {aug.kernel_size}, steps={args.steps} (+{args.warmup} warm-up)")
    times = []
    for step in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        v1, v2 = aug(images, gen)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    result = {
        "device": str(device), "batch_size": args.batch_size, "input_size": in_size, "size": args.size,
        "steps": args.steps, "threads": torch.get_num_threads(),
        "ms_per_batch_two_views": round(ms, 3),
        "ms_min": round(1e3 * min(times), 3),
        "img_per_s": round(args.batch_size / (ms / 1e3), 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
