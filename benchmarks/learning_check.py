"""Does BYOL learn on real images here? Pretrain under a wall-clock budget (or a step count), then
compare its features with an untrained network's and with raw pixels on the same train/test split.

    python benchmarks/learning_check.py --data ../shared/data/cifar10-jpg.tar --minutes 30
    python benchmarks/learning_check.py --data ... --steps 160 --batch-size 128 --eval-subset 1000 \
        --run-name tau90 trainer.m=0.9                    # rank a setting: fixed steps, quick probe set
    python benchmarks/learning_check.py --data /data/my-images --minutes 60 --image-size 32

--data: an image folder with train/ and test/ subfolders (one subfolder per class in each), or a
.tar of one (extracted once into --workdir). The run starts from --recipe (configs/short_cpu.yaml)
plus the overrides. Steps: (1) with --minutes, pretraining runs with trainer.max_time=<minutes>m:
it measures its own step time over its first (training) steps and sets the step count so the LR
and EMA schedules run to completion inside the budget (byol/pretrain/budget.py; --steps N fixes the
count instead: a ranking that does not depend on what else shares the CPU); (2) the encoder's features of train and test go to shards (--eval-subset N: N train and N/2
test images per class, to rank settings quickly); (3) linear head, kNN and logistic regression on them, and on the
run's starting weights (RUN_DIR/encoder-start.pt, written by training at step 0, the pipeline's
control too; and encoder-start-bn.pt, the same weights with BN statistics measured on the training
images) at the same size: what pretraining added;
raw pixels with PCA (128 components) + logistic regression and PCA + kNN, at the views' size (like
for like) and at the images' native size (--pixel-size). The margins and the verdict are
byol/report/verdict.py's, as in the pipeline's report: each feature set's best of logistic regression and
kNN, picked on validation, with a 95% interval from a paired bootstrap over the test rows.
Hyper-parameters are chosen on a validation split of train, never on test. Untrained and pixel
stores are kept in WORKDIR/baselines and reused by later rows. Add trainer.knn_every=N for the
online kNN curve (the run's metrics.jsonl; its step-0 row is the starting weights' score).
Prints the stages, then one JSON object as its last line.
"""
import argparse
import json
import sys
import tarfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byol.config import load_config, small_stem_for  # noqa: E402
from byol.evaluate.options import Options  # noqa: E402
from byol.evaluate.runner import run_baseline, run_head  # noqa: E402
from byol.extract.extract_command import extract  # noqa: E402
from byol.pretrain.checkpoint import START_ENCODER_FILE  # noqa: E402
from byol.pretrain.loop import train  # noqa: E402
from byol.pretrain.optim import base_ema_rate  # noqa: E402
from byol.pretrain.start_bn import START_BN_ENCODER_FILE  # noqa: E402
from byol.report.report_command import plot_training, read_metrics  # noqa: E402
from byol.report.verdict import validation_top1, verdict  # noqa: E402
from byol.store import FeatureStore  # noqa: E402

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


def eval_subset(root: Path, per_class: int, workdir: Path) -> Path:
    """A stratified probe set for ranking settings quickly: the first `per_class` train and
    per_class // 2 test images of every class, as symbolic links (pretraining still reads all of
    train/). Full-size evaluation is per_class=0."""
    if per_class <= 0:
        return root
    target = workdir / f"subset{per_class}"
    if not (target / ".done").exists():
        for split, n in (("train", per_class), ("test", per_class // 2)):
            for cls in sorted(p for p in (root / split).iterdir() if p.is_dir()):
                (target / split / cls.name).mkdir(parents=True, exist_ok=True)
                for f in sorted(cls.iterdir())[:n]:
                    link = target / split / cls.name / f.name
                    if not link.exists():
                        link.symlink_to(f)
        (target / ".done").touch()
    return target


def start_store_dir(workdir: Path, start_encoder: Path) -> Path:
    """Where the untrained (starting-weights) stores of `start_encoder` (RUN_DIR/encoder-start.pt,
    written by training at step 0) go: named by the weights' SHA-256, so every run that starts from
    the same weights (same network, stem, seed) reuses one copy (extraction resumes)."""
    from byol.encoders.files import metadata_path
    sha = json.loads(metadata_path(start_encoder).read_text())["weights"]["pt"]["sha256"]
    return workdir / "baselines" / f"start-{sha[:16]}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=30.0, help="pretraining wall-clock budget "
                    "(trainer.max_time=<minutes>m: the run chooses its steps)")
    ap.add_argument("--steps", type=int, default=0, help="> 0: pretrain exactly this many steps (no time "
                    "budget): ranks settings by what they learn per step, whatever else shares the CPU")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/byol-learning-check"),
                    help="holds the extracted images and the baselines' stores, shared by runs")
    ap.add_argument("--run-name", default="run", help="the run's folder under WORKDIR/runs/ (a run "
                    "whose checkpoint exists there is resumed)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="pretraining/embedding size (default: the recipe's data_transforms.input_shape)")
    ap.add_argument("--pixel-size", type=int, default=32, help="native size of the images: the raw-pixel "
                    "baselines run at it as well as at --image-size (CIFAR-10 is 32)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the recipe's trainer.batch_size")
    ap.add_argument("--random-init-baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="also score the untrained encoder (linear and kNN), the control for what "
                         "pretraining added")
    ap.add_argument("--pixel-baselines", action=argparse.BooleanOptionalAction, default=True,
                    help="--no-pixel-baselines skips the PCA rows (they do not depend on the pretraining "
                         "settings; once computed they are reused from WORKDIR/baselines anyway)")
    ap.add_argument("--pca-solver", choices=("auto", "covariance", "incremental"), default="auto",
                    help="the pixel baselines' PCA (byol/evaluate/pca.py; auto: covariance up to 4096-d). "
                    "The covariance solver's eigendecomposition costs the same whatever the rows (seconds at "
                    "32 px); incremental is cheaper when the probe set has far fewer rows than pixels (--eval-subset)")
    ap.add_argument("--eval-subset", type=int, default=0, metavar="N", help="> 0: evaluate every row on N "
                    "train and N/2 test images per class (a quick probe to rank settings; pretraining still "
                    "reads all of train/); 0: the full splits")
    ap.add_argument("--recipe", default=str(ROOT / "configs" / "short_cpu.yaml"),
                    help="config file the run starts from (default: the short-budget recipe)")
    ap.add_argument("--encoder", type=Path, default=None, help="score this encoder file instead of pretraining "
                    "one (e.g. byol-pytorch's, saved by ../shared/bench/peers/peer_learning.py --save PATH): the "
                    "same extraction and probes as our rows; no starting-weights rows")
    ap.add_argument("overrides", nargs="*", help="section.key=value, on top of the recipe")
    return ap.parse_args()


def extract_all(args: argparse.Namespace, encoder: Path, run_dir: Path, eval_settings: list[str], size: int,
                recipe: Path) -> tuple[dict, dict, list[int]]:
    """The stores every row reads: BYOL's, the controls' (the run's own starting weights, with initial and
    with measured BN statistics) and raw pixels' at the views' size and the images' own size."""
    stores = {f"byol_{split}": extract(encoder, split, run_dir / "features", eval_settings,
                                       progress=False)["split_dir"] for split in ("train", "test")}
    controls = {}
    if args.random_init_baseline:
        controls = {name: run_dir / file for name, file in (("init", START_ENCODER_FILE),
                                                             ("init_bn", START_BN_ENCODER_FILE))
                    if (run_dir / file).is_file()}
    for name, start in controls.items():
        folder = start_store_dir(args.workdir, start) / f"features{args.eval_subset}-{size}px"
        for split in ("train", "test"):
            stores[f"{name}_{split}"] = extract(start, split, folder, eval_settings, progress=False)["split_dir"]
    pixel_sizes = sorted({size, args.pixel_size}) if args.pixel_baselines else []
    for px in pixel_sizes:
        for split in ("train", "test"):
            stores[f"pixels{px}_{split}"] = extract(
                "pixels", split, args.workdir / "baselines" / f"pixels{px}-subset{args.eval_subset}",
                eval_settings + [f"data_transforms.input_shape=({px},{px},3)"], config_file=recipe,
                progress=False)["split_dir"]
    return stores, controls, pixel_sizes


def score_all(stores: dict, controls: dict, pixel_sizes: list[int], run_dir: Path,
              pca_solver: str = "auto") -> tuple[dict, dict]:
    """Every row's top-1 (the printed JSON's *_top1 keys) and the verdict's results dict (its keys:
    logreg, knn, start-*, start-bn-*, pca-*; of the two pixel sizes, the better on validation)."""
    out: dict = {"eval_images": {"train": len(FeatureStore.open(stores["byol_train"])),
                                 "test": len(FeatureStore.open(stores["byol_test"]))}}
    results: dict = {}

    def scored(name: str, key: str, train_store: str, test_store: str, results_dir: Path) -> None:
        opts = Options(results_dir=str(results_dir), overwrite=True)
        out[f"{name}linear_top1"] = round(run_head("linear", train_store, test_store, opts)["top1"], 2)
        for method in ("knn", "logreg"):
            results[f"{key}{method}"] = run_baseline(method, train_store, test_store, opts)
            out[f"{name}{method}_top1"] = round(results[f"{key}{method}"]["top1"], 2)

    scored("", "", stores["byol_train"], stores["byol_test"], run_dir / "results")
    for name in controls:
        prefix = name.replace("init", "random_init")
        scored(f"{prefix}_", "start-" if name == "init" else "start-bn-", stores[f"{name}_train"],
               stores[f"{name}_test"], run_dir / f"{prefix}_results")
    for px in pixel_sizes:
        opts = Options(results_dir=str(run_dir / f"pixel{px}_results"), overwrite=True, pca_solver=pca_solver)
        for method in ("pca-logreg", "pca-knn"):
            result = run_baseline(method, stores[f"pixels{px}_train"], stores[f"pixels{px}_test"], opts)
            out[f"pixels{px}_{method.replace('-', '_')}_top1"] = round(result["top1"], 2)
            best = results.get(method)
            if best is None or (validation_top1(result) or 0) > (validation_top1(best) or 0):
                results[method], result["image_size"] = result, px
    return out, results


def verdict_fields(results: dict) -> dict:
    """The margins: each feature set's best probe (logistic regression or kNN) picked on validation, against
    the stronger control and the best raw-pixel baseline, each with its 95% interval."""
    decided, fields = verdict(results), {}
    if decided["start"] or decided["pixels"]:
        fields["verdict"] = decided["sentence"]
    if decided["start"]:
        fields.update(margin_over_random_init=decided["margin_over_start"], best_control=decided["start"]["key"],
                      interval_over_random_init=decided["interval_over_start"])
    if decided["pixels"]:
        key = decided["pixels"]["key"]
        fields.update(margin_over_pixels=decided["margin_over_pixels"],
                      interval_over_pixels=decided["interval_over_pixels"],
                      best_pixel_baseline=f"{key} at {results[key]['image_size']} px")
    return fields


def main() -> None:
    args = parse_args()
    root = dataset_root(args.data.resolve(), args.workdir)
    s = args.image_size or load_config(args.recipe).data_transforms.input_shape[0]
    settings = ["data.name=folder", f"data.root={root}", "data.split=train", "data.knn_train_split=train",
                "data.eval_split=test", "data.download=false", f"data_transforms.input_shape=({s},{s},3)",
                *([f"trainer.batch_size={args.batch_size}"] if args.batch_size else []), "trainer.knn_every=0",
                "trainer.tensorboard=false", "trainer.checkpoint_interval=500", *args.overrides]
    recipe = Path(args.recipe)
    eval_settings = settings + [f"data.root={eval_subset(root, args.eval_subset, args.workdir)}"]
    started = time.perf_counter()
    run_dir = args.workdir / "runs" / args.run_name

    # a fixed step count, or a time budget the run turns into steps itself (a resumed run keeps them)
    length = f"trainer.max_steps={args.steps}" if args.steps > 0 else f"trainer.max_time={args.minutes}m"
    cfg = load_config(recipe, settings + [f"trainer.run_dir={run_dir}", length])
    t = time.perf_counter()
    if args.encoder:         # someone else's encoder: scored only
        summary, args.random_init_baseline = {"encoder": args.encoder.resolve()}, False
    else:
        summary = train(cfg, resume=run_dir if (run_dir / "checkpoints" / "last.pt").exists() else None)
        # RUN_DIR/loss.png and, with trainer.knn_every, knn.png (the start as a line)
        plot_training(read_metrics(run_dir), run_dir)
    pretrain_s = time.perf_counter() - t

    stores, controls, pixel_sizes = extract_all(args, summary["encoder"], run_dir, eval_settings, s, recipe)
    out, results = score_all(stores, controls, pixel_sizes, run_dir, args.pca_solver)
    out.update(verdict_fields(results), image_size=s, small_stem=small_stem_for(cfg))
    if not args.encoder:
        out.update(pretrain_minutes=round(pretrain_s / 60, 1), steps=summary["steps"],
                   epochs=round(summary["steps"] * cfg.trainer.batch_size / summary["images"], 2),
                   time_budget=summary.get("time_budget"), batch_size=cfg.trainer.batch_size,
                   base_tau=round(base_ema_rate(cfg.trainer.m, summary["steps"]), 4),
                   precision=summary["precision"], recipe=recipe.name, overrides=args.overrides)
    else:
        out["encoder"] = str(args.encoder)
    out["total_minutes"] = round((time.perf_counter() - started) / 60, 1)
    print(json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
