"""Peak memory (RSS) of every evaluation method over a large generated feature store.

    python benchmarks/eval_memory.py              # 1,000,000 x 512 float32 train rows (2 GB), 10,000 test
    python benchmarks/eval_memory.py --rows 200000 --methods knn,logreg --epochs 2

Writes Gaussian-cluster train/test stores with ShardWriter into a temp dir (--workdir to choose,
--keep to leave them), then runs each method as its own command (`eval/baselines.py` or
`eval/load_and_train.py`, in a subprocess), reading that child's peak RSS from os.wait4. Each
method is also run on a tiny store of the same dim (--baseline-rows) to measure its fixed cost
(interpreter, numpy/scikit-learn/h5py imports, thread pools), so the figures show what grows with
the data: `growth_mb` = peak - fixed. The target is peak RSS <= --budget-fraction (25%) of the data
size. `imports_rss_mb` is what importing every evaluation module costs; `torch_import_rss_mb` what
`import torch` alone would add (no method imports it: that alone is over the budget). The stores
are written by a separate process, because on Linux a child's ru_maxrss starts at the peak of the
process it was started from (exec keeps the old high-water mark): `parent_rss_mb`, printed last,
is the floor under every figure.

Epochs (heads and logreg's streaming fallback) and kNN validation queries are capped by flags so
the run ends in minutes on a 2-core CPU. Prints a table, then one JSON line: data size, budget,
and per method peak_rss_mb, fixed_rss_mb, growth_mb, seconds, top1, solver, streams.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                                    # run from a checkout, uninstalled
from synthetic_store import write_synthetic_store  # noqa: E402

METHODS = ("logreg", "knn", "pca-logreg", "pca-knn", "linear", "mlp")
IMPORTS = ("import sys; sys.path.insert(0, '.'); import h5py, byol.command_line, byol.evaluate.runner, byol.evaluate.training, "
           "byol.evaluate.head_file, byol.evaluate.logreg, byol.evaluate.neighbors, byol.evaluate.pca, "
           "sklearn.linear_model, sklearn.decomposition, sklearn.preprocessing, safetensors.numpy; "
           "assert 'torch' not in sys.modules")
TORCH_IMPORT = "import torch"
SOLVERS = {"knn": "running top-k over blocks (numpy)", "pca-knn": "running top-k over blocks (numpy)",
           "linear": "numpy AdamW over blocks", "mlp": "numpy AdamW over blocks"}


def write_store(split_dir: Path, rows: int, dim: int, classes: int, shard_rows: int, seed: int) -> None:
    """Gaussian clusters (fixed centres, so train and test agree) written block by block: the
    generator never holds more than one block of rows (benchmarks/synthetic_store.py)."""
    centres = np.random.default_rng(12345).standard_normal((classes, dim)).astype(np.float32) * 0.15
    rng = np.random.default_rng(seed)

    def make_rows(lo: int, hi: int):
        y = rng.integers(0, classes, hi - lo)
        return centres[y] + rng.standard_normal((hi - lo, dim), dtype=np.float32), y
    write_synthetic_store(split_dir, rows, dim, shard_rows, make_rows, {"encoder": "synthetic", "image_size": 96},
                          {"layer": "pool", "image_size": 96})


def write_stores(jobs: list, args) -> None:
    for split_dir, rows, seed in jobs:
        write_store(split_dir, rows, args.dim, args.classes, args.shard_rows, seed)


def command(method: str, train: Path, test: Path, args, results: Path) -> list[str]:
    common = ["--train", str(train), "--test", str(test), "--results-dir", str(results),
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", "0"]
    if method in ("linear", "mlp"):
        return [sys.executable, str(ROOT / "eval" / "load_and_train.py"), "--head", method, *common,
                "--out-head", str(results / f"{method}-{train.parent.name}-{time.time_ns()}.safetensors")]
    return [sys.executable, str(ROOT / "eval" / "baselines.py"), "--method", method, *common,
            "--max-memory-mb", str(args.max_memory_mb), "--val-max-queries", str(args.val_max_queries)]


def measure(cmd: list[str], log) -> tuple[float, float, dict | None]:
    """(peak RSS MB of that child alone, seconds, its JSON result or None)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=log, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = out.read().strip().splitlines()
    seconds = time.perf_counter() - started
    result = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    return usage.ru_maxrss / 1024, seconds, result                # ru_maxrss is in KB on Linux


def parse_arguments(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="training rows")
    ap.add_argument("--test-rows", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--shard-rows", type=int, default=250_000)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=1, help="heads and logreg's streaming fallback")
    ap.add_argument("--batch-size", type=int, default=1024, help="minibatch of the heads")
    ap.add_argument("--val-max-queries", type=int, default=2000, help="kNN validation queries")
    ap.add_argument("--max-memory-mb", type=float, default=None,
                    help="logreg lbfgs budget (default: the RSS budget, --budget-fraction of the data)")
    ap.add_argument("--budget-fraction", type=float, default=0.25)
    ap.add_argument("--baseline-rows", type=int, default=2000, help="rows of the fixed-cost store")
    ap.add_argument("--workdir", default=None, help="where the stores go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated stores")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_arguments(argv)
    data_mb = args.rows * args.dim * 4 / 2**20
    budget_mb = args.budget_fraction * data_mb
    args.max_memory_mb = args.max_memory_mb or budget_mb
    methods = [m for m in args.methods.split(",") if m]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="eval-memory-"))
    try:
        started = time.perf_counter()
        big, tiny = work / "big", work / "tiny"
        jobs = []
        if not (big / "train" / "manifest.json").is_file():
            jobs += [(big / "train", args.rows, 0), (big / "test", args.test_rows, 1)]
        if not (tiny / "train" / "manifest.json").is_file():
            jobs += [(tiny / "train", args.baseline_rows, 2), (tiny / "test", min(args.test_rows, args.baseline_rows), 3)]
        # In a separate process: a child's ru_maxrss starts at this process's peak (exec keeps the
        # high-water mark of the memory it replaces), so this process must stay small.
        writer = multiprocessing.get_context("spawn").Process(target=write_stores, args=(jobs, args))
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise SystemExit(f"writing the stores failed (exit {writer.exitcode})")
        print(f"stores: {args.rows:,} x {args.dim} train ({data_mb:,.0f} MB float32), {args.test_rows:,} test, "
              f"written in {time.perf_counter() - started:.0f} s under {work}", flush=True)
        print(f"budget: peak RSS <= {budget_mb:,.0f} MB ({args.budget_fraction:.0%} of the data)", flush=True)
        print(f"{'method':<11} {'peak MB':>8} {'fixed MB':>9} {'growth MB':>10} {'seconds':>8} {'top1':>6}  solver",
              flush=True)
        report = {}
        with open(work / "stderr.log", "a") as log:
            imports, _, _ = measure([sys.executable, "-c", IMPORTS], log)
            print(f"{'(imports)':<11} {imports:>8.0f}   python + every evaluation module + sklearn + h5py, no work",
                  flush=True)
            torch_import, _, _ = measure([sys.executable, "-c", TORCH_IMPORT], log)
            print(f"{'(torch)':<11} {torch_import:>8.0f}   python + import torch alone (no method imports it)",
                  flush=True)
            for method in methods:
                fixed, _, _ = measure(command(method, tiny / "train", tiny / "test", args, work / "results"), log)
                peak, seconds, result = measure(command(method, big / "train", big / "test", args,
                                                        work / "results"), log)
                result = result or {}
                report[method] = {
                    "peak_rss_mb": round(peak, 1), "fixed_rss_mb": round(fixed, 1), "growth_mb": round(peak - fixed, 1),
                    "seconds": round(seconds, 1), "top1": result.get("top1"),
                    "solver": result.get("solver", SOLVERS.get(method)), "pca_solver": result.get("pca_solver"),
                    "streams": result.get("streams"), "ok": bool(result), "within_budget": peak <= budget_mb,
                    "growth_within_budget": peak - fixed <= budget_mb}
                top1 = f"{result['top1']:.1f}" if result else "FAIL"
                pca = f" (PCA: {result['pca_solver']})" if result.get("pca_solver") else ""
                print(f"{method:<11} {peak:>8.0f} {fixed:>9.0f} {peak - fixed:>10.0f} {seconds:>8.0f} {top1:>6}  "
                      f"{report[method]['solver']}{pca}", flush=True)
        summary = {"rows": args.rows, "test_rows": args.test_rows, "dim": args.dim, "classes": args.classes,
                   "data_mb": round(data_mb, 1), "budget_mb": round(budget_mb, 1), "epochs": args.epochs,
                   "val_max_queries": args.val_max_queries, "max_memory_mb": args.max_memory_mb,
                   "cpu_count": os.cpu_count(), "peak_rss_mb": {m: r["peak_rss_mb"] for m, r in report.items()},
                   "growth_mb": {m: r["growth_mb"] for m, r in report.items()}, "imports_rss_mb": round(imports, 1),
                   "torch_import_rss_mb": round(torch_import, 1),
                   "within_budget": {m: r["within_budget"] for m, r in report.items()},
                   "growth_within_budget": {m: r["growth_within_budget"] for m, r in report.items()},
                   "methods": report}
        floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary["parent_rss_mb"] = round(floor, 1)
        print(f"(every figure is at least this benchmark process's own peak RSS, {floor:.0f} MB: "
              f"a child's ru_maxrss starts there)", flush=True)
        print(json.dumps(summary), flush=True)
        return summary
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
