"""Is an index library worth a dependency? Exact streaming search (the project's) against faiss and hnswlib.

    pip install faiss-cpu hnswlib          # only for this benchmark: byol depends on neither
    python benchmarks/search_index.py                      # 200,000 x 512 bank, 10,000 queries, k=10
    python benchmarks/search_index.py --bank 50000 --queries 2000

The bank is random unit rows (the hard case for an approximate index: no cluster structure to
exploit) with a near copy planted after every 100th row. Each method answers the same queries
(bank rows, so each query's own row must come back first): `exact` is byol.search.nearest.nearest
over an in-memory store stand-in, streamed in 65,536-row blocks through byol.base.knn.running_topk;
`faiss-flat` is faiss.IndexFlatIP (also exact: BLAS plus a heap); `hnsw` is hnswlib's graph index
(M=16, ef_construction=200, ef=64: approximate), whose build time is counted since a store is
searched once per command. Recall@k is against the exact answer. The duplicate search asks every
row of the store, so its cost scales as (queries here) x (N / queries). Prints a table and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from byol.search.nearest import nearest  # noqa: E402


class ArrayStore:
    """The part of FeatureStore that nearest() reads, over an array already in memory (so every
    method starts from the same rows, and none pays for HDF5 reads the others would not)."""

    def __init__(self, x: np.ndarray):
        self.x, self.n_rows, self.dim, self.split_dir = x, len(x), x.shape[1], Path("<memory>")

    def iter_blocks(self, block_rows, fields=("embeddings",)):
        for lo in range(0, self.n_rows, block_rows):
            yield {"embeddings": self.x[lo:lo + block_rows]}


def bank_rows(n: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    planted = np.arange(0, n - 1, 100)
    x[planted + 1] = x[planted] + 0.2 * x[planted + 1]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    x = bank_rows(args.bank, args.dim)
    q_rows = np.linspace(0, args.bank - 1, args.queries).astype(np.int64)
    queries = x[q_rows]
    rows = {}
    began = time.perf_counter()
    _, truth = nearest(ArrayStore(x), queries, args.k)
    rows["exact"] = {"seconds": time.perf_counter() - began, "build_seconds": 0.0, "recall": 1.0}
    try:
        import faiss
        began = time.perf_counter()
        index = faiss.IndexFlatIP(args.dim)
        index.add(x)
        built = time.perf_counter() - began
        _, found = index.search(queries, args.k)
        rows["faiss-flat"] = {"seconds": time.perf_counter() - began, "build_seconds": built,
                              "recall": recall(found, truth)}
    except ImportError:
        print("faiss not installed: pip install faiss-cpu", file=sys.stderr)
    try:
        import hnswlib
        began = time.perf_counter()
        index = hnswlib.Index(space="ip", dim=args.dim)
        index.init_index(max_elements=args.bank, ef_construction=200, M=16)
        index.add_items(x, np.arange(args.bank))
        built = time.perf_counter() - began
        index.set_ef(64)
        found, _ = index.knn_query(queries, k=args.k)
        rows["hnsw"] = {"seconds": time.perf_counter() - began, "build_seconds": built, "recall": recall(found, truth)}
    except ImportError:
        print("hnswlib not installed: pip install hnswlib", file=sys.stderr)
    base = rows["exact"]["seconds"]
    print(f"{'method':<12}{'seconds':>9}{'of which build':>16}{'recall@k':>10}{'vs exact':>10}")
    for name, r in rows.items():
        r["speedup"] = base / r["seconds"]
        print(f"{name:<12}{r['seconds']:>9.1f}{r['build_seconds']:>16.1f}{r['recall']:>10.4f}{r['speedup']:>9.2f}x")
    print(json.dumps({"bank": args.bank, "dim": args.dim, "queries": args.queries, "k": args.k,
                      "results": {n: {k: round(v, 4) for k, v in r.items()} for n, r in rows.items()}}))


if __name__ == "__main__":
    main()
