"""Plot the kNN curves of benchmarks/learning_curve.py runs on one chart (one line per log file).

    python benchmarks/plot_curves.py /tmp/curves/*.log --out docs/images/curves.png \
        --title "CIFAR-10, 32 px, ResNet-18, batch 256"

Each log's last line is learning_curve.py's JSON summary; its label is the file name unless
`--label FILE=TEXT` says otherwise. The x axis is epochs (images seen / 50,000 for CIFAR-10).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_curve(path: Path) -> dict:
    last = [line for line in path.read_text().splitlines() if line.startswith("{")][-1]
    return json.loads(last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="")
    ap.add_argument("--label", action="append", default=[], help="FILE=TEXT: the legend text of a log")
    args = ap.parse_args()
    labels = dict(item.split("=", 1) for item in args.label)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for path in args.logs:
        run = read_curve(path)
        per_epoch = run["steps"] / run["epochs"]
        steps, knn = zip(*run["curve"])
        ax.plot([s / per_epoch for s in steps], knn, marker="o", label=labels.get(path.name, path.stem))
    ax.set(xlabel="epoch", ylabel="kNN top-1 (%)", title=args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
