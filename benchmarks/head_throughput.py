"""Training speed of the numpy heads against the same network and optimiser in torch, one run.

    python benchmarks/head_throughput.py                         # 65,536 x 512 rows, MLP 512 and linear
    python benchmarks/head_throughput.py --rows 20000 --batch-size 1024 --hidden 1024 --rounds 5

The heads are numpy (byol/evaluate/heads.py: `import torch` alone is over the evaluation memory
budget). This measures what that costs in speed: one epoch of minibatch AdamW steps over the same
in-memory float32 rows, our numpy head against an nn.Sequential of the same shape with
torch.optim.AdamW (fp32, the CPU's threads for both), rounds alternated so drift hits both.
Reading the store is left out: it is the same for both. Prints a table, then one JSON line with
rows/s per system and the ratio numpy / torch (median of the rounds).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # run from a checkout, uninstalled
from byol.evaluate.heads import build_head, cross_entropy  # noqa: E402
from byol.evaluate.training import AdamW  # noqa: E402


def numpy_epoch(x, y, kind, hidden, dropout, batch_size, seed) -> float:
    head = build_head(kind, x.shape[1], int(y.max()) + 1, hidden, dropout, seed=seed)
    optimizer, rng = AdamW(head.parameters(), lr=1e-3), np.random.default_rng(seed)
    started = time.perf_counter()
    for start in range(0, len(y), batch_size):
        logits, cache = head.forward_train(x[start:start + batch_size], rng)
        _, grad = cross_entropy(logits, y[start:start + batch_size])
        optimizer.step(head.backward(cache, grad))
    return len(y) / (time.perf_counter() - started)


def torch_epoch(x, y, kind, hidden, dropout, batch_size, seed) -> float:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers, width = [], x.shape[1]
    for size in (hidden if kind == "mlp" else ()):
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    model = nn.Sequential(*layers, nn.Linear(width, int(y.max()) + 1)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    started = time.perf_counter()
    for start in range(0, len(y), batch_size):
        loss = nn.functional.cross_entropy(model(xt[start:start + batch_size]), yt[start:start + batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(y) / (time.perf_counter() - started)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=512, help="the MLP's hidden width (the CLI default)")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=256, help="the CLI default")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    y = rng.integers(0, args.classes, args.rows)
    import torch
    print(f"{args.rows:,} x {args.dim} rows, batch {args.batch_size}, {args.rounds} rounds; numpy {np.__version__}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} CPUs", flush=True)
    print(f"{'head':<8} {'system':<7} {'rows/s per round':<34} {'median':>9}", flush=True)
    report = {}
    for kind in ("linear", "mlp"):
        rates = {"numpy": [], "torch": []}
        torch_epoch(x[:4096], y[:4096], kind, [args.hidden], args.dropout, args.batch_size, 0)   # warm-up
        numpy_epoch(x[:4096], y[:4096], kind, [args.hidden], args.dropout, args.batch_size, 0)
        for r in range(args.rounds):
            order = ("numpy", "torch") if r % 2 == 0 else ("torch", "numpy")
            for system in order:
                run = numpy_epoch if system == "numpy" else torch_epoch
                rates[system].append(run(x, y, kind, [args.hidden], args.dropout, args.batch_size, r))
        medians = {s: statistics.median(v) for s, v in rates.items()}
        for system, values in rates.items():
            per_round = " / ".join(f"{v:,.0f}" for v in values)
            print(f"{kind:<8} {system:<7} {per_round:<34} {medians[system]:>9,.0f}", flush=True)
        report[kind] = {"numpy_rows_per_s": round(medians["numpy"]), "torch_rows_per_s": round(medians["torch"]),
                        "numpy_over_torch": round(medians["numpy"] / medians["torch"], 3),
                        "rounds": {s: [round(v) for v in values] for s, values in rates.items()}}
        print(f"{kind:<8} numpy / torch = {report[kind]['numpy_over_torch']:.2f}x", flush=True)
    summary = {"rows": args.rows, "dim": args.dim, "hidden": args.hidden, "batch_size": args.batch_size,
               "dropout": args.dropout, "cpu_count": os.cpu_count(), "heads": report}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
