"""Peak memory (RSS) and time of `byol search` and `byol duplicates` over generated stores of two sizes.

    python benchmarks/search_memory.py                        # 20,000 and 200,000 rows x 512
    python benchmarks/search_memory.py --rows 20000 50000 --no-duplicates

Writes each store (random unit-norm rows, every 100th row followed by a near copy of itself:
cosine about 0.995, above byol duplicates' default threshold) in a separate process, then runs
each command as its own child process and reads its peak RSS from os.wait4, as
benchmarks/eval_memory.py does. A tiny store of the same dim
gives the fixed cost (interpreter, imports), so `growth_mb` = peak - fixed is what the store's size
adds. Streaming through the one kNN core should keep growth flat between the two sizes; a full
load of 200,000 x 512 float32 rows alone would be 410 MB. Duplicates costs N^2 D multiply-adds
(exact all pairs): minutes at 200,000 rows on 2 cores. Prints a table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                                    # run from a checkout, uninstalled
from synthetic_store import write_synthetic_store  # noqa: E402

COPY_EVERY = 100


def write_store(split_dir: Path, rows: int, dim: int, shard_rows: int) -> None:
    """Unit rows with a planted near copy after every COPY_EVERY-th, written block by block
    (benchmarks/synthetic_store.py)."""
    rng = np.random.default_rng(0)

    def make_rows(lo: int, hi: int):
        x = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        copies = np.arange(lo, hi - 1)
        copies = copies[copies % COPY_EVERY == 0] - lo
        x[copies + 1] = x[copies] + 0.1 * x[copies + 1]      # cosine ~ 1 / sqrt(1.01) = 0.995
        return x, np.full(hi - lo, -1)
    attrs = {"encoder": "synthetic", "image_size": 32}
    write_synthetic_store(split_dir, rows, dim, shard_rows, make_rows, attrs, attrs)


def run(argv: list[str]) -> tuple[float, float, dict]:
    """(peak RSS MB of that child alone, seconds, its JSON summary) of `byol ARGV` in a child process."""
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-m", "byol", *argv], cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)         # the child's own rusage: its peak RSS
        out.seek(0), err.seek(0)
        lines, errors = out.read().strip().splitlines(), err.read()
    seconds = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0 or not lines:
        raise SystemExit(f"byol {' '.join(argv)} failed:\n{errors[-2000:]}")
    return usage.ru_maxrss / 1024, seconds, json.loads(lines[-1])    # ru_maxrss is in KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=10, help="row queries for byol search")
    parser.add_argument("--no-duplicates", action="store_true", help="measure search only")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="search-memory-"))
    sizes = [1000, *args.rows]
    for rows in sizes:
        if not (work / f"store-{rows}" / "manifest.json").is_file():
            p = multiprocessing.get_context("spawn").Process(
                target=write_store, args=(work / f"store-{rows}", rows, args.dim, args.shard_rows))
            p.start(), p.join()
    results = {}
    print(f"{'command':<12}{'rows':>9}{'peak MB':>10}{'growth MB':>11}{'seconds':>9}  result")
    for command in ("search", *(() if args.no_duplicates else ("duplicates",))):
        fixed = None
        for rows in sizes:
            store = work / f"store-{rows}"
            out = work / f"out-{command}-{rows}"
            if command == "search":
                argv = ["search", *[f"row:{i * COPY_EVERY}" for i in range(args.queries)], "--store", str(store),
                        "--out", str(out), "--overwrite", "--k", "10"]
            else:
                argv = ["duplicates", str(store), "--out", str(out), "--overwrite"]
            peak, seconds, summary = run(argv)
            fixed = peak if fixed is None else fixed
            found = (f"{summary['n_groups']} groups ({rows // COPY_EVERY} planted)" if command == "duplicates"
                     else f"{summary['n_queries']} queries")
            print(f"{command:<12}{rows:>9,}{peak:>10.0f}{peak - fixed:>11.0f}{seconds:>9.1f}  {found}")
            results[f"{command}-{rows}"] = {"peak_rss_mb": round(peak, 1), "growth_mb": round(peak - fixed, 1),
                                            "seconds": round(seconds, 1), "store_mb": round(rows * args.dim * 4 / 2**20, 1),
                                            **{k: summary[k] for k in ("n_groups", "n_pairs") if k in summary}}
    print(json.dumps({"dim": args.dim, "results": results}))


if __name__ == "__main__":
    main()
