"""Our pretraining throughput against public BYOL implementations, measured in the same run.

    python benchmarks/compare_peers.py --peers-python /path/to/venv/bin/python

The peers are measured by the shared script `../shared/bench/peers/bench.py` (lucidrains'
byol-pytorch 0.9.1 and lightly, each with its default augmentation) in an environment that has
them installed (`pip install torch==2.14.1 torchvision==0.29.1 byol-pytorch lightly`); ours by
`benchmarks/train_throughput.py` (the real training loop, data loading and per-sample
augmentation included). Same work for all: ResNet-18, 96 px, batch 64, projector 512-4096-256,
predictor 256-4096-256, SGD, EMA target. Rounds alternate (A B C, A B C) so drift on this shared
machine hits every system alike. Prints a Markdown table, then one JSON object as its last line.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_ours(precision: str, channels_last: bool, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--precision", precision,
           "--steps", str(steps), "--warmup", str(warmup),
           "--channels-last" if channels_last else "--no-channels-last"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_peer(python: str, bench_dir: Path, system: str, steps: int, warmup: int) -> dict:
    out = subprocess.run([python, "bench.py", "--system", system, "--steps", str(steps),
                          "--warmup", str(warmup)], capture_output=True, text=True, cwd=bench_dir,
                         check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    return {"img_per_s": res["img_s_median"], "peak_rss_mb": res["peak_rss_mb_self"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-python", required=True, help="python of an env with byol-pytorch and lightly")
    ap.add_argument("--bench-dir", default=str(ROOT.parent / "shared" / "bench" / "peers"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()

    systems = {
        "ours (bf16, channels_last)": lambda: run_ours("bf16", True, a.steps, a.warmup),
        "ours (fp32)": lambda: run_ours("fp32", False, a.steps, a.warmup),
        "lucidrains byol-pytorch": lambda: run_peer(a.peers_python, Path(a.bench_dir), "lucidrains", a.steps, a.warmup),
        "lightly": lambda: run_peer(a.peers_python, Path(a.bench_dir), "lightly", a.steps, a.warmup),
    }
    results = {name: [] for name in systems}
    for r in range(a.rounds):
        for name, run in systems.items():
            res = run()
            results[name].append(res)
            print(f"round {r + 1}: {name}: {res['img_per_s']:.1f} img/s", file=sys.stderr, flush=True)

    medians = {name: statistics.median(x["img_per_s"] for x in rs) for name, rs in results.items()}
    fastest_peer = max(medians["lucidrains byol-pytorch"], medians["lightly"])
    print("| system | img/s per round | median | vs fastest peer |")
    print("|---|---|---|---|")
    for name, rs in results.items():
        rounds = " / ".join(f"{x['img_per_s']:.1f}" for x in rs)
        print(f"| {name} | {rounds} | {medians[name]:.1f} | {medians[name] / fastest_peer:.2f}x |")
    summary = {"img_per_s": {k: round(v, 2) for k, v in medians.items()},
               "speedup_vs_fastest_peer": round(medians["ours (bf16, channels_last)"] / fastest_peer, 2),
               "fp32_speedup_vs_fastest_peer": round(medians["ours (fp32)"] / fastest_peer, 2),
               "augment_share": [x.get("augment_share") for x in results["ours (bf16, channels_last)"]]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
