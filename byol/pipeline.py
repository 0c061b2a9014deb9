"""Images to report in one command: pretrain -> extract (BYOL's embeddings, its starting weights'
embeddings and raw pixels) -> every evaluation -> RUN_DIR/report.md with the verdict.

    python -m byol.pipeline --config configs/demo.yaml          # embedded digits, a few minutes on CPU
    python -m byol.pipeline --config config.yaml trainer.max_epochs=10 data.root=/data

Each stage writes files the next one reads (docs/stages/pipeline.md), so a rerun picks up where it stopped:
training resumes from RUN_DIR/checkpoints/last.pt, extraction skips finished shards, and
evaluation writes new result files rather than overwriting. The train/test splits are
`data.knn_train_split` and `data.eval_split` of the config (labelled splits). The encoder training
started from (RUN_DIR/encoder-start.pt) gets logistic regression and kNN too (`start-logreg`,
`start-knn`): the control that says what pretraining added; so do the same weights with batch-norm
statistics measured on the training images (RUN_DIR/encoder-start-bn.pt: `start-bn-logreg`,
`start-bn-knn`), often the stronger control; the verdict takes the better on validation. Prints a JSON summary (the results
table and the verdict) as its last line.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import time
from pathlib import Path

import torch

from byol.base.atomic import atomic_write_text
from byol.command_line import DEFAULT_CONFIG, add_config_arguments, check_overrides, parse_arguments, run_command
from byol.pretrain.train_command import config_for_run

log = logging.getLogger("byol")


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_pipeline(config_file: str | None, overrides: list[str], head_epochs: int = 30) -> dict:
    """config_file (None: ./config.yaml) <- overrides; a run_dir holding checkpoints/last.pt resumes."""
    from byol.base.provenance import library_versions
    from byol.pretrain.checkpoint import START_ENCODER_FILE
    from byol.pretrain.start_bn import START_BN_ENCODER_FILE
    from byol.evaluate.options import Options
    from byol.evaluate.runner import run_baseline, run_head
    from byol.extract.extract_command import extract
    from byol.report.report_command import write_report
    from byol.report.verdict import verdict
    from byol.pretrain.loop import train

    config_file = config_file or DEFAULT_CONFIG    # the pixel stores read it too
    cfg, resume = config_for_run(config_file, overrides, resume_if_found=True)
    run_dir = Path(cfg.trainer.run_dir)
    splits = {"train": cfg.data.knn_train_split, "test": cfg.data.eval_split}
    stage_seconds, result_files = {}, {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        stage_seconds[name] = round(time.perf_counter() - t, 2)
        log.info("stage %s done in %.1f s", name, stage_seconds[name])
        return out

    summary = timed("pretrain", lambda: train(cfg, resume=resume))
    encoders = {"byol": (summary["encoder"], "features")}
    start_encoder = run_dir / START_ENCODER_FILE
    if start_encoder.is_file():
        encoders["start"] = (start_encoder, "features-start")
        if (run_dir / START_BN_ENCODER_FILE).is_file():      # the same weights, BN statistics measured
            encoders["start-bn"] = (run_dir / START_BN_ENCODER_FILE, "features-start-bn")
    else:
        log.warning("%s is missing (a run trained before byol wrote it): no starting-weights control",
                    start_encoder)
    stores = {}
    for role, split in splits.items():
        for name, (encoder, folder) in encoders.items():
            stage = f"extract {role}" if name == "byol" else f"extract {name} {role}"
            stores[f"{name}_{role}"] = timed(stage, lambda: extract(
                encoder, split, run_dir / folder, overrides, progress=cfg.trainer.progress))["split_dir"]
        stores[f"pixels_{role}"] = timed(f"pixels {role}", lambda: extract(
            "pixels", split, run_dir / "pixels", overrides, config_file=config_file,
            progress=cfg.trainer.progress))["split_dir"]

    opts = Options(epochs=head_epochs, results_dir=str(run_dir / "results"))
    results = {}
    for kind in ("linear", "mlp"):
        results[kind] = timed(f"head {kind}", lambda: run_head(kind, stores["byol_train"], stores["byol_test"], opts))
    for method in ("logreg", "knn"):
        results[method] = timed(method, lambda: run_baseline(method, stores["byol_train"], stores["byol_test"], opts))
    for control in ("start", "start-bn"):
        if control in encoders:
            control_opts = Options(epochs=head_epochs, results_dir=str(run_dir / f"results-{control}"))
            for method in ("logreg", "knn"):
                results[f"{control}-{method}"] = timed(f"{control} {method}", lambda: run_baseline(
                    method, stores[f"{control}_train"], stores[f"{control}_test"], control_opts))
    for method in ("pca-logreg", "pca-knn"):
        results[method] = timed(method, lambda: run_baseline(method, stores["pixels_train"],
                                                             stores["pixels_test"], opts))
    result_files = {k: r["results_file"] for k, r in results.items() if "results_file" in r}

    info = {"stage_seconds": stage_seconds, "result_files": result_files,
            "features_test": stores["byol_test"], "stores": stores,
            "provenance": {"versions": library_versions(), "python": platform.python_version(),
                           "device": summary["device"], "precision": summary["precision"],
                           "threads": torch.get_num_threads(), "git_revision": git_revision(),
                           "platform": platform.platform(), "train_steps": summary["steps"]}}
    atomic_write_text(run_dir / "pipeline.json", json.dumps(info, indent=2))
    report = timed("report", lambda: write_report(run_dir))
    info["stage_seconds"] = stage_seconds
    atomic_write_text(run_dir / "pipeline.json", json.dumps(info, indent=2))
    top1 = {k: r["top1"] for k, r in results.items()}
    return {"report": str(report), "top1": top1, "verdict": verdict(results),
            "seconds": round(sum(stage_seconds.values()), 1)}


def build_parser(prog: str = "python -m byol.pipeline") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--head-epochs", type=int, default=30, help="epochs of the linear and MLP heads")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m byol.pipeline") -> None:
    args = parse_arguments(build_parser(prog), argv)
    run_command(lambda: run_pipeline(args.config, check_overrides(args.overrides), args.head_epochs))


if __name__ == "__main__":
    main()
