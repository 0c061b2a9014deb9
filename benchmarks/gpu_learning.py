"""A one-command GPU proof that the embeddings are good: BYOL pretrains ResNet-18 on a CIFAR-10
subset for a wall-clock budget, then logistic regression and kNN on its features are scored against
the same network untrained (its step-0 weights, RUN_DIR/encoder-start.pt) and raw pixels.

Once, on a machine that has ../shared (the GPU machine has neither network nor ../shared):

    python benchmarks/gpu_learning.py --pack     # -> .gpu_data/cifar10: 2,500 train + 500 test JPEGs a class, ~28 MB

On the GPU machine (its system python3, torch 2.11, no venv), carrying the git-ignored .gpu_data
(and .whl, the byol-pytorch wheels gpu_check's peer row needs), this proof first, then the GPU check,
each as its own command (each plans to end well inside 10 minutes, the two inside 15):

    python3 benchmarks/gpu_learning.py --out $OUT/gpu_learning.json      # ~240 s training + ~2 min
    python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json

    python benchmarks/gpu_learning.py --smoke    # the same plumbing at tiny CPU settings (without --smoke and
                                                 # without CUDA: a one-line error, exit 1)

Stages: pretrain (byol.pretrain.loop.train: configs/short_cpu.yaml plus GPU_RECIPE below, 32 px
views, bf16, channels_last, augmentation on the device) for --budget seconds (trainer.max_time:
the LR and EMA schedules end with the budget); extract train and test for the trained encoder, the
untrained one and raw pixels (byol.extract.extract_command); score logreg and kNN on each (byol.evaluate.runner;
pixels: PCA to 128 first). Prints a table, writes --out and prints the
same JSON as its last line. target_met: BYOL's kNN top-1 >= 80% on the subset's test images.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PACKED = ROOT / ".gpu_data" / "cifar10"     # git-ignored; travels to the GPU machine when carried
MARKER = "packed.json"                      # written last: its presence means the folder is complete
SOURCE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar"
TARGET_KNN = 80.0
# Workers: the GPU machine has 16 cores. One process decoded these 32 px JPEGs and cut both crops
# of each at ~2,400 img/s on this 2-core CPU (FolderCropViews, one thread; the ~650 img/s per worker
# of docs/measurements/performance.md is for 500x375 photos at 96 px), so 12 workers feed ~29,000 img/s: above what one GPU
# trains ResNet-18 BYOL at 32 px (an estimate, ~10-20k img/s: gpu_busy_share says if it fell
# short), leaving 4 cores to the main process (kernel launches), the pin-memory thread and sampling.
GPU_WORKERS = 12
# solo-learn's CIFAR BYOL recipe (vturrisi/solo-learn, scripts/pretrain/cifar/byol.yaml): ResNet-18,
# 4096-256 heads, LARS lr 1.0 x B/256, weight decay 1e-5, eta 0.02, biases and norms excluded,
# warmup + cosine, tau 0.99 -> 1.0 (1,000 epochs, 10 of warmup). The budget buys tens of epochs, so
# warmup is 3 epochs (~230 steps: LARS at lr 2.0 needs a ramp) rather than 1% of the run.
GPU_RECIPE = ["data_transforms.input_shape=(32,32,3)", "network.small_stem=true",
              "network.projection_head.mlp_hidden_size=4096", "network.projection_head.projection_size=256",
              "trainer.batch_size=512", "trainer.precision=bf16", "trainer.channels_last=true",
              f"trainer.num_workers={GPU_WORKERS}", "trainer.device=cuda", "trainer.m=0.99",
              "trainer.log_every=20", "trainer.checkpoint_interval=100000", "trainer.epoch_checkpoints=false",
              "optimizer.name=lars",
              "optimizer.params.lr=1.0", "optimizer.lr_scaling=linear", "optimizer.params.weight_decay=1e-5",
              "optimizer.params.momentum=0.9", "optimizer.lars_eta=0.02", "optimizer.exclude_bias_and_norm=true",
              "optimizer.lr_schedule=cosine", "optimizer.warmup_epochs=3"]
# Tiny CPU settings: the same stages in seconds (16 px views, small heads, a few steps).
SMOKE_RECIPE = ["data_transforms.input_shape=(16,16,3)", "network.projection_head.mlp_hidden_size=64",
                "network.projection_head.projection_size=32", "trainer.batch_size=8", "trainer.precision=fp32",
                "trainer.num_workers=0", "trainer.device=cpu", "trainer.log_every=1", "optimizer.warmup_epochs=0"]


# ------------------------------------------------------------------------------------ packing
def pack(source: Path, dest: Path, train_per_class: int, test_per_class: int) -> dict:
    """The first N train and M test JPEGs of every class (by file name), copied byte for byte out of
    the tar (only the chosen members are read) into a temp folder renamed to `dest` once complete."""
    settings = {"source": source.name, "train_per_class": train_per_class, "test_per_class": test_per_class}
    marker = dest / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return {**json.loads(marker.read_text()), "reused": True}
    if not source.is_file():
        raise SystemExit(f"error: {source} not found; pass --source PATH to CIFAR-10 as "
                         f"cifar10/{{train,test}}/<class>/NNNN.jpg in a .tar")
    started = time.perf_counter()
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    limit = {"train": train_per_class, "test": test_per_class}
    with tarfile.open(source) as tar:
        chosen: dict[tuple[str, str], list[tarfile.TarInfo]] = {}
        for m in tar.getmembers():          # the index only: headers, no image bytes
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] in limit and m.name.lower().endswith(".jpg"):
                chosen.setdefault((parts[-3], parts[-2]), []).append(m)
        counts, n_bytes = {"train": 0, "test": 0}, 0
        for (split, cls), members in sorted(chosen.items()):
            (tmp / split / cls).mkdir(parents=True)
            for m in sorted(members, key=lambda m: m.name)[:limit[split]]:
                data = tar.extractfile(m).read()
                (tmp / split / cls / Path(m.name).name).write_bytes(data)
                counts[split] += 1
                n_bytes += len(data)
    classes = sorted({cls for _, cls in chosen})
    if not classes or not counts["train"] or not counts["test"]:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"error: {source} holds no */train/<class>/*.jpg and */test/<class>/*.jpg images")
    info = {"settings": settings, "classes": classes, "images": counts, "bytes": n_bytes,
            "seconds": round(time.perf_counter() - started, 1)}
    (tmp / MARKER).write_text(json.dumps(info, indent=2))
    shutil.rmtree(dest, ignore_errors=True)       # an older pack with other counts
    tmp.rename(dest)
    return {**info, "reused": False}


# ------------------------------------------------------------------------------- measurement
class GpuBusy:
    """Samples the GPU's utilisation (the share of time a kernel ran, as nvidia-smi reports it) twice
    a second while pretraining runs: below ~90% the data loader or the host, not the GPU, set the
    pace. share is None without CUDA, or where neither pynvml nor nvidia-smi answers."""

    def __init__(self, enabled: bool):
        self.enabled, self.samples, self.stop = enabled, [], threading.Event()

    @staticmethod
    def read() -> float:
        import torch
        try:
            return float(torch.cuda.utilization())     # pynvml (nvidia-ml-py), when importable
        except Exception:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True, timeout=5)
            return float(out.stdout.split()[0])

    def loop(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.samples.append(self.read())
            except Exception:
                return

    def __enter__(self):
        if self.enabled:
            self.thread = threading.Thread(target=self.loop, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.stop.set()
            self.thread.join()

    @property
    def share(self) -> float | None:
        return round(statistics.mean(self.samples) / 100, 3) if self.samples else None


def pretrain(recipe: Path, settings: list[str], workdir: Path, budget: float, smoke: bool) -> tuple[dict, dict]:
    """Train for the budget; returns the trainer's summary and what the measurement adds."""
    from byol.config import load_config
    from byol.pretrain.loop import train
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)    # a fresh run: encoder-start.pt is its step-0 network
    # trainer.max_time fits the step count, and so the LR and EMA schedules, to the budget, start-up
    # and checkpoints included (byol/pretrain/budget.py); max_epochs only bounds it (solo-learn's
    # 1,000), and the smoke run's 3 steps end it before its first estimate.
    bound = "trainer.max_steps=3" if smoke else "trainer.max_epochs=1000"
    cfg = load_config(recipe, settings + [bound, f"trainer.max_time={budget}", f"trainer.run_dir={run_dir}"])
    t0 = time.perf_counter()
    with GpuBusy(enabled=not smoke) as busy:
        summary = train(cfg)
    seconds = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in rows[1:] if "img_per_s" in r]   # the first row holds the start-up
    extra = dict(seconds=seconds, gpu_busy_share=busy.share, batch_size=cfg.trainer.batch_size,
                 img_per_s=round(summary["steps"] * cfg.trainer.batch_size / seconds, 1),
                 img_per_s_steady=round(statistics.median(rates), 1) if rates else None,
                 num_workers=cfg.trainer.num_workers, image_size=cfg.data_transforms.input_shape[0])
    return summary, extra


def stores(summary: dict, recipe: Path, settings: list[str], workdir: Path, smoke: bool) -> dict:
    """Feature stores of train and test for the trained encoder, the step-0 one and raw pixels."""
    from byol.extract.extract_command import extract
    from byol.pretrain.checkpoint import START_ENCODER_FILE
    run_dir = Path(summary["run_dir"])
    start = run_dir / START_ENCODER_FILE
    if not start.is_file():
        raise SystemExit(f"error: {start} is missing: the trainer writes it at step 0 of a fresh run")
    kw = dict(progress=False, batch_size=64 if smoke else 512)
    out = {}
    for name, source, config in (("byol", summary["encoder"], None), ("start", start, None),
                                 ("pixels", "pixels", recipe)):
        for split in ("train", "test"):
            out[f"{name}_{split}"] = extract(source, split, workdir / "features" / name, settings,
                                             config_file=config, **kw)["split_dir"]
    return out


def probes(split_dirs: dict, workdir: Path, smoke: bool) -> dict:
    """Top-1 % of logreg and kNN on each representation (C and k chosen on a validation split of
    train); raw pixels go through PCA to 128 first, as the learning check (docs/measurements/learning.md) scores them.
    The smoke run checks plumbing, not accuracy: one C, one k and 50 lbfgs iterations (on a few
    dozen separable rows lbfgs otherwise runs all 1,000) keep it to seconds."""
    from byol.evaluate.options import Options
    from byol.evaluate.runner import run_baseline
    top1, grids = {}, {"C_grid": (1.0,), "k_grid": (5,), "max_iter": 50} if smoke else {}
    for name in ("byol", "start", "pixels"):
        opts = Options(results_dir=str(workdir / "results" / name), overwrite=True, **grids)
        for method in ("logreg", "knn"):
            run = f"pca-{method}" if name == "pixels" else method
            result = run_baseline(run, split_dirs[f"{name}_train"], split_dirs[f"{name}_test"], opts)
            top1[f"{name}-{method}"] = round(result["top1"], 2)
    return top1


def table(r: dict) -> str:
    t = r["top1"]
    lines = [f"GPU learning proof on {r['device_name']}: {r['steps']} steps of {r['batch_size']} "
             f"({r['epochs']} epochs of {r['images']['train']} images) in {r['seconds']['pretrain']} s, "
             f"{r['img_per_s']} img/s, GPU busy {r['gpu_busy_share']}",
             f"  top-1 % on {r['images']['test']} test images   logreg    kNN"]
    for name, label in (("byol", "BYOL"), ("start", "untrained (step 0)"), ("pixels", "raw pixels (PCA-128)")):
        lines.append(f"  {label:<33}{t[f'{name}-logreg']:>7}{t[f'{name}-knn']:>7}")
    m = r["margins"]
    lines.append(f"  BYOL - untrained: logreg {m['logreg_over_start']:+}, kNN {m['knn_over_start']:+}; "
                 f"BYOL - pixels: logreg {m['logreg_over_pixels']:+}, kNN {m['knn_over_pixels']:+}")
    lines.append(f"  target (BYOL kNN >= {TARGET_KNN}%): {'met' if r['target_met'] else 'not met'}; "
                 f"seconds: {r['seconds']}")
    return "\n".join(lines)


def prove(a, smoke: bool, device_name: str) -> dict:
    import torch
    from learning_check import dataset_root, eval_subset
    from byol.store import FeatureStore
    started = time.perf_counter()
    if not a.data.exists():
        raise SystemExit(f"error: {a.data} not found; write it with --pack on a machine that has the CIFAR-10 tar")
    root = dataset_root(a.data.resolve(), a.workdir)
    if smoke:   # a few images a class, as symbolic links (learning_check's probe subset)
        root = eval_subset(root, a.smoke_per_class, a.workdir)
    recipe = ROOT / "configs" / "short_cpu.yaml"
    settings = ["data.name=folder", f"data.root={root}", "data.split=train", "data.knn_train_split=train",
                "data.eval_split=test", "data.download=false", "trainer.knn_every=0", "trainer.tensorboard=false",
                "trainer.progress=false", *(SMOKE_RECIPE if smoke else GPU_RECIPE), *a.overrides]
    print(f"pretraining on {root} ({'3 steps' if smoke else f'{a.budget:.0f} s'})", flush=True)
    summary, trained = pretrain(recipe, settings, a.workdir, a.budget, smoke)
    print(f"pretrained {summary['steps']} steps in {trained['seconds']:.0f} s; "
          f"extracting features", flush=True)
    t0 = time.perf_counter()
    split_dirs = stores(summary, recipe, settings, a.workdir, smoke)
    t1 = time.perf_counter()
    print(f"extracted in {t1 - t0:.0f} s; scoring logreg and kNN", flush=True)
    top1 = probes(split_dirs, a.workdir, smoke)
    t2 = time.perf_counter()
    margins = {f"{m}_over_{base}": round(top1[f"byol-{m}"] - top1[f"{base}-{m}"], 2)
               for m in ("logreg", "knn") for base in ("start", "pixels")}
    return {"device_name": device_name, "smoke": smoke, "torch": str(torch.__version__), "budget_s": a.budget,
            "images": {s: len(FeatureStore.open(split_dirs[f"byol_{s}"])) for s in ("train", "test")},
            "steps": summary["steps"], "epochs": round(summary["steps"] * trained["batch_size"] / summary["images"], 2),
            "precision": summary["precision"], "final_loss": summary["final_loss"],
            "seconds": {"pretrain": round(trained.pop("seconds"), 1), "extract": round(t1 - t0, 1),
                        "probes": round(t2 - t1, 1), "total": round(time.perf_counter() - started, 1)},
            **trained, "top1": top1, "margins": margins, "target_knn_top1": TARGET_KNN,
            "target_met": top1["byol-knn"] >= TARGET_KNN, "overrides": a.overrides}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", action="store_true", help="write the CIFAR-10 subset into --data and stop")
    ap.add_argument("--source", type=Path, default=SOURCE, help="--pack's CIFAR-10 .tar")
    # 25,000 + 5,000 files: the folder travels in a checkout copy of at most 64 MiB, where each
    # ~1 KB JPEG may also cost an archive header and padding (40,000 + 5,000 could pass 64 MiB)
    ap.add_argument("--train-per-class", type=int, default=2500, help="--pack: train JPEGs a class")
    ap.add_argument("--test-per-class", type=int, default=500, help="--pack: test JPEGs a class")
    ap.add_argument("--data", type=Path, default=PACKED, help="the packed folder (train/ and test/)")
    ap.add_argument("--budget", type=float, default=240.0, help="pretraining wall-clock seconds")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/byol-gpu-learning"),
                    help="run, feature stores and results (outside the checkout: nothing large travels back)")
    ap.add_argument("--out", default="gpu_learning.json")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU settings (what runs without CUDA)")
    ap.add_argument("--smoke-per-class", type=int, default=8, help="--smoke: train images a class (test: half)")
    ap.add_argument("overrides", nargs="*", help="section.key=value on top of the recipe")
    a = ap.parse_args(argv)
    if a.pack:
        result = pack(a.source.resolve(), a.data, a.train_per_class, a.test_per_class)
        print(json.dumps(result), flush=True)
        return result
    # The device tool returns the last 12,000 characters of output: the evaluation's progress bars
    # would crowd out the table (tqdm reads this when imported, so before byol is).
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    smoke = a.smoke
    if not smoke and not torch.cuda.is_available():
        print("error: no CUDA device visible: the GPU learning proof needs one (--smoke runs its stages at "
              "tiny CPU settings)", file=sys.stderr, flush=True)
        raise SystemExit(1)
    result = prove(a, smoke, torch.cuda.get_device_name(0) if not smoke else "CPU (smoke)")
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(table(result), flush=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
