"""End-to-end BYOL pretraining throughput: the real `byol.pretrain.train` loop (DataLoader over
STL-10-layout binary files, per-sample batched augmentation, online + EMA target, optimizer step).

    python benchmarks/train_throughput.py                       # ResNet-18, 96 px, batch 64, auto precision
    python benchmarks/train_throughput.py --precision fp32 --no-channels-last
    python benchmarks/train_throughput.py --arch resnet50 --image-size 64 --batch-size 32

Defaults are issue 3's configuration: projector 512-4096-256, predictor 256-4096-256, SGD.
Images/s counts images (each seen as two views), measured as the interval between step ends after
`--warmup` steps, so data waits are included. Augmentation's share of a step is measured on the
same batch size in the same process. Prints its configuration, then one JSON object last.
"""
import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from byol.config import load_config  # noqa: E402
from byol.data.augment import BYOLViews  # noqa: E402
from byol.pretrain.loop import train  # noqa: E402
from byol.pretrain.setup import resolve_precision  # noqa: E402
from tests.testkit import write_stl10_binary  # noqa: E402


def augmentation_ms(batch: int, size: int, device: torch.device, repeats: int = 10) -> float:
    """Median ms for two views of one uint8 batch on the training device (as the loop runs them)."""
    aug = BYOLViews(size).to(device)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        aug(images, torch.Generator().manual_seed(i))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[2:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--hidden", type=int, default=4096, help="projector/predictor hidden size")
    ap.add_argument("--proj", type=int, default=256, help="projection size")
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--log-every", type=int, default=1,
                    help="steps between metric rows (the loop syncs with the device only then)")
    a = ap.parse_args()

    n_steps = a.warmup + a.steps
    with tempfile.TemporaryDirectory() as tmp:
        write_stl10_binary(tmp, n_train=a.batch_size * n_steps, n_test=10, n_unlabeled=10)
        cfg = load_config(None, [
            f"network.name={a.arch}", "network.small_stem=false",
            f"network.projection_head.mlp_hidden_size={a.hidden}",
            f"network.projection_head.projection_size={a.proj}",
            "data.name=stl10", f"data.root={tmp}", "data.split=train", "data.download=false",
            f"data_transforms.input_shape=({a.image_size},{a.image_size},3)",
            f"trainer.batch_size={a.batch_size}", f"trainer.max_steps={n_steps}",
            f"trainer.num_workers={a.num_workers}", f"trainer.precision={a.precision}",
            f"trainer.channels_last={a.channels_last}", f"trainer.device={a.device}",
            f"trainer.log_every={a.log_every}", "trainer.progress=false", "trainer.tensorboard=false",
            f"trainer.checkpoint_interval={10 * n_steps}", f"trainer.run_dir={tmp}/run",
        ])
        device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if a.device == "auto" else a.device))
        config = dict(arch=a.arch, image_size=a.image_size, batch_size=a.batch_size,
                      precision=resolve_precision(a.precision, device), channels_last=a.channels_last,
                      head=f"{512 if a.arch != 'resnet50' else 2048}-{a.hidden}-{a.proj}",
                      steps=a.steps, warmup=a.warmup, threads=torch.get_num_threads(), device=str(device),
                      cpu_capability=torch.backends.cpu.get_cpu_capability())
        print("config:", json.dumps(config), flush=True)
        train(cfg)
        rows = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    # each row's rate covers the log_every steps before it: drop the rows that include warm-up steps
    warmup_rows = -(-a.warmup // a.log_every)
    rates = [r["img_per_s"] for r in rows if "img_per_s" in r][warmup_rows:]
    median = statistics.median(rates)
    aug_ms = augmentation_ms(a.batch_size, a.image_size, device)
    step_ms = 1000 * a.batch_size / median
    result = dict(config, img_per_s=round(median, 2), img_per_s_min=round(min(rates), 2),
                  img_per_s_max=round(max(rates), 2), step_ms=round(step_ms, 1),
                  augment_ms=round(aug_ms, 1), augment_share=round(aug_ms / step_ms, 4),
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
