"""Does BYOL learn on real images here? Pretrain under a wall-clock budget, then compare its features
with raw-pixel PCA baselines on the same train/test split.

    python benchmarks/learning_check.py --data ../shared/data/cifar10-jpg.tar --minutes 30
    python benchmarks/learning_check.py --data /data/my-images --minutes 60 --image-size 32
    python benchmarks/learning_check.py --data ... --minutes 30 optimizer.params.lr=0.1   # any config key

--data: an image folder with train/ and test/ subfolders (one subfolder per class in each), or a
.tar of one (extracted once into --workdir). Steps: (1) a short probe measures images/s at these
settings; (2) pretraining gets max_steps = minutes x images/s / batch, so the LR and EMA schedules
run to completion inside the budget; (3) the encoder's 512-d features of train and test go to
shards; (4) linear head and kNN on them, and on the untrained (same-seed) encoder's features: the
control for what pretraining added; raw pixels at --pixel-size (the images' native size) with
PCA (128 components) + logistic regression and PCA + kNN (k=10), as in the STL-10 table.
Hyper-parameters are chosen on a validation split of train, never on test. The PCA rows do not
depend on the pretraining settings: --no-pixel-baselines skips them when comparing settings.
Prints the stages, then one JSON object as its last line.
"""
import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byol.config import load_config  # noqa: E402
from byol.evaluate.options import Options  # noqa: E402
from byol.evaluate.runner import run_baseline, run_head  # noqa: E402
from byol.extract import extract  # noqa: E402
from byol.store import FeatureStore  # noqa: E402
from byol.pretrain.loop import build_networks, train  # noqa: E402
from byol.pretrain.checkpoint import export_encoder

ROOT = Path(__file__).resolve().parents[1]


def dataset_root(data: Path, workdir: Path) -> Path:
    """The folder holding train/ and test/ (a .tar is extracted into workdir once)."""
    if data.is_file() and tarfile.is_tarfile(data):
        target = workdir / "images"
        if not (target / ".extracted").exists():
            print(f"extracting {data} -> {target}", flush=True)
            with tarfile.open(data) as tar:
                tar.extractall(target, filter="data")
            (target / ".extracted").touch()
        data = target
    for folder in [data, *sorted(p for p in data.glob("*") if p.is_dir())]:
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return folder
    raise SystemExit(f"error: {data} has no train/ and test/ subfolders (one folder per class in each)")


def random_init_encoder(cfg, path: Path) -> Path:
    """encoder.pt of the untrained network, seeded as the pretraining run: the control that tells
    what pretraining added (random conv features alone score well above chance on small images)."""
    torch.manual_seed(cfg.trainer.seed)
    online, _ = build_networks(cfg)
    return export_encoder(cfg, online, 0, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=30.0, help="pretraining wall-clock budget")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/byol-learning-check"))
    ap.add_argument("--image-size", type=int, default=16,
                    help="pretraining/embedding size (16: ~3x the images/s of 32 on a 2-core CPU)")
    ap.add_argument("--pixel-size", type=int, default=32, help="size of the raw-pixel baselines' images "
                    "(their native size: CIFAR-10 is 32)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--probe-steps", type=int, default=8)
    ap.add_argument("--random-init-baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="also score the untrained encoder (linear and kNN), the control for what "
                         "pretraining added")
    ap.add_argument("--pixel-baselines", action=argparse.BooleanOptionalAction, default=True,
                    help="--no-pixel-baselines skips the PCA rows (they do not depend on the pretraining "
                         "settings: run them once, then compare settings faster)")
    ap.add_argument("overrides", nargs="*", help="section.key=value, on top of the settings below")
    args = ap.parse_args()
    root = dataset_root(args.data.resolve(), args.workdir)
    s = args.image_size
    settings = ["data.name=folder", f"data.root={root}", "data.split=train", "data.knn_train_split=train",
                "data.eval_split=test", "data.download=false", f"data_transforms.input_shape=({s},{s},3)",
                "data_transforms.min_scale=0.2", "network.small_stem=true", f"trainer.batch_size={args.batch_size}",
                "trainer.num_workers=1", "trainer.m=0.99", "trainer.knn_every=0", "trainer.tensorboard=false",
                "trainer.checkpoint_interval=500", "optimizer.params.lr=0.2", "optimizer.warmup_epochs=0.5",
                *args.overrides]
    started = time.perf_counter()

    probe = load_config(ROOT / "config.yaml", settings + [f"trainer.run_dir={args.workdir / 'probe'}",
                                                            f"trainer.max_steps={args.probe_steps}",
                                                            "trainer.log_every=1", "trainer.progress=false"])
    train(probe)
    rows = [json.loads(line) for line in (args.workdir / "probe" / "metrics.jsonl").read_text().splitlines()]
    rate = sorted(r["img_per_s"] for r in rows[2:] if "img_per_s" in r)   # skip warm-up steps
    img_per_s = rate[len(rate) // 2]
    steps = max(1, int(args.minutes * 60 * img_per_s / args.batch_size))
    print(f"probe: {img_per_s:.1f} img/s -> {steps} steps of {args.batch_size} in {args.minutes} min", flush=True)

    run_dir = args.workdir / "run"
    cfg = load_config(ROOT / "config.yaml", settings + [f"trainer.run_dir={run_dir}", f"trainer.max_steps={steps}"])
    t = time.perf_counter()
    summary = train(cfg, resume=run_dir if (run_dir / "checkpoints" / "last.pt").exists() else None)
    pretrain_s = time.perf_counter() - t

    stores = {}
    init_encoder = random_init_encoder(cfg, run_dir / "random_init_encoder.pt") if args.random_init_baseline else None
    for split in ("train", "test"):
        stores[f"byol_{split}"] = extract(summary["encoder"], split, run_dir / "features", settings)["split_dir"]
        if init_encoder is not None:
            stores[f"init_{split}"] = extract(init_encoder, split, run_dir / "random_init_features",
                                              settings)["split_dir"]
        if args.pixel_baselines:
            # raw pixels at the images' own size: the strongest pixel baseline, not a downsampled one
            stores[f"pixels_{split}"] = extract("pixels", split, run_dir / "pixels",
                                                settings + [f"data_transforms.input_shape=({args.pixel_size},{args.pixel_size},3)"],
                                                config_file=ROOT / "config.yaml")["split_dir"]
    opts = Options(results_dir=str(run_dir / "results"), overwrite=True)
    results = {"linear": run_head("linear", stores["byol_train"], stores["byol_test"], opts),
               "knn": run_baseline("knn", stores["byol_train"], stores["byol_test"], opts)}
    if init_encoder is not None:
        init_opts = Options(results_dir=str(run_dir / "random_init_results"), overwrite=True)
        results["random_init_linear"] = run_head("linear", stores["init_train"], stores["init_test"], init_opts)
        results["random_init_knn"] = run_baseline("knn", stores["init_train"], stores["init_test"], init_opts)
    if args.pixel_baselines:
        results["pca_logreg"] = run_baseline("pca-logreg", stores["pixels_train"], stores["pixels_test"], opts)
        results["pca_knn"] = run_baseline("pca-knn", stores["pixels_train"], stores["pixels_test"], opts)
    out = {f"{k}_top1": round(r["top1"], 2) for k, r in results.items()}
    best_byol = max(out["knn_top1"], out["linear_top1"])
    if init_encoder is not None:
        out["margin_over_random_init"] = round(best_byol - max(out["random_init_linear_top1"],
                                                               out["random_init_knn_top1"]), 2)
    if args.pixel_baselines:
        best_pixels = max(out["pca_logreg_top1"], out["pca_knn_top1"])
        out.update(margin_points=round(best_byol - best_pixels, 2), target_met=best_byol - best_pixels >= 10)
    out.update(pretrain_minutes=round(pretrain_s / 60, 1), steps=summary["steps"],
               epochs=round(summary["steps"] * args.batch_size / len(FeatureStore.open(stores["byol_train"])), 2),
               probe_img_per_s=round(img_per_s, 1), image_size=s, batch_size=args.batch_size,
               precision=summary["precision"], total_minutes=round((time.perf_counter() - started) / 60, 1),
               overrides=args.overrides)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
