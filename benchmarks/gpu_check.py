"""The prepared GPU check: one command that proves the CUDA path and measures it, in under 8 minutes.

    python benchmarks/gpu_check.py                       # on a CUDA machine: everything below
    python benchmarks/gpu_check.py --out gpu_check.json  # where the JSON goes (default ./gpu_check.json)
    python benchmarks/gpu_check.py --smoke               # tiny CPU settings: checks the script's own plumbing
    python benchmarks/gpu_check.py --smoke --smoke-train network.name=mobilenet_v3_small \\
                                  "network.kwargs={width_mult: 0.25}"
                                  # its main.py runs (train_resume, ddp) with these config overrides on top:
                                  # a network much smaller than ResNet-18, as tests/test_gpu_check.py runs it

On a CUDA machine, each part in a child process with its own time limit (a failed part is recorded
and the rest still run):

  cuda_tests     the CUDA-only tests (`pytest -k cuda`: augmentation on the GPU equals the CPU's)
  train_resume   `main.py` 50 steps on the GPU (bf16 autocast, channels_last, augmentation on the
                 device) over STL-10-layout files, then `--resume` for 10 more: steps 50 then 60
  throughput     training images/s, ours (`train_throughput.py`: the real loop, data loading and
                 per-sample augmentation included) against lucidrains' byol-pytorch 0.9.1 (its own
                 batched augmentation, fp32, as its README trains) on the same GPU, ResNet-18 at 96 px
                 and ResNet-50 at 224 px; the ratio and augmentation's share of our step
  ddp            `torchrun --nproc-per-node=<GPUs>` for a few steps; every rank's weights agree
                 (one GPU: 2 CPU processes over gloo, so DDP itself still runs)
  extraction     `byol.extract.extract_command` images/s against the encoder alone (`extract_throughput.py`)
  decoding       JPEG images/s per data-loading worker (`decode_throughput.py`), and how many workers
                 the measured training rate needs

Without CUDA it says so in one line and runs the same parts at tiny CPU settings (`--smoke`), so the
script itself is tested on machines without a GPU (tests/test_gpu_check.py). Exit status 0 when
every part passed, 1 otherwise.
byol-pytorch is optional: without it the peer row says how to install it. Prints a table, writes
everything to --out, and prints the JSON as its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
# (arch, image size, batch): the two settings users train at most; batches as large as fit sensibly.
GPU_SETTINGS = [("resnet18", 96, 256), ("resnet50", 224, 128)]
SMOKE_SETTINGS = [("resnet18", 32, 8)]


def run(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run a child; its last stdout line is a JSON object (our commands' convention)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "cmd": " ".join(cmd)}
    seconds = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        return {"ok": False, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}",
                "cmd": " ".join(cmd), "seconds": seconds}
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        result = {"stdout_tail": "\n".join(lines[-5:])}
    return {"ok": True, "seconds": seconds, **(result if isinstance(result, dict) else {"result": result})}


def stl10_files(root: Path, n_train: int) -> Path:
    from tests.testkit import write_stl10_binary
    write_stl10_binary(root, n_train=n_train, n_test=64, n_unlabeled=8)
    return root


def train_overrides(root: Path, run_dir: Path, steps: int, smoke: bool, smoke_train: list[str]) -> list[str]:
    size, batch = (32, 8) if smoke else (96, 64)
    return ["data.name=stl10", f"data.root={root}", "data.split=train", "data.download=false",
            f"data_transforms.input_shape=({size},{size},3)", f"trainer.batch_size={batch}",
            f"trainer.max_steps={steps}", "trainer.log_every=10", "trainer.progress=false",
            "trainer.tensorboard=false", "trainer.checkpoint_interval=1000", f"trainer.run_dir={run_dir}",
            f"trainer.device={'cpu' if smoke else 'cuda'}", "trainer.num_workers=2",
            "trainer.precision=auto", "trainer.channels_last=true"] + (
        ["network.projection_head.mlp_hidden_size=64", "network.projection_head.projection_size=32",
         *smoke_train] if smoke else [])


def part_cuda_tests(smoke: bool) -> dict:
    if smoke:   # on a CPU the CUDA tests only skip: nothing to check but that pytest runs them
        return {"ok": True, "skipped": "no CUDA"}
    res = run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider", "tests"], 240)
    return res


def part_train_resume(tmp: Path, smoke: bool, smoke_train: list[str]) -> dict:
    root, run_dir = stl10_files(tmp / "stl", 64 * 60 if not smoke else 64), tmp / "run"
    overrides = train_overrides(root, run_dir, 50 if not smoke else 2, smoke, smoke_train)
    first = run([sys.executable, "main.py", *overrides], 240)
    if not first["ok"]:
        return {"ok": False, "first": first}
    second = run([sys.executable, "main.py", "--resume", str(run_dir),
                  f"trainer.max_steps={60 if not smoke else 3}"], 120)
    want = (50, 60) if not smoke else (2, 3)
    ok = second["ok"] and (first.get("steps"), second.get("steps")) == want
    return {"ok": ok, "steps": [first.get("steps"), second.get("steps")], "precision": first.get("precision"),
            "device": first.get("device"), "final_loss": second.get("final_loss"), "first": first, "second": second}


def peer_child(arch: str, size: int, batch: int, steps: int, warmup: int, device: str) -> dict:
    """lucidrains byol-pytorch on `device`: its own BYOL learner and default augmentation."""
    import torch
    import torchvision
    from byol_pytorch import BYOL
    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = torch.nn.Identity()      # as ../shared/bench/peers/bench.py: the pooled output is the representation
    learner = BYOL(net, image_size=size, hidden_layer=-1, projection_size=256, projection_hidden_size=4096,
                   use_simplicial_embeddings=False).to(device)   # the paper's head, not the package default
    opt = torch.optim.SGD(learner.parameters(), lr=0.03, momentum=0.9, weight_decay=4e-4)
    images = torch.rand(batch, 3, size, size, device=device)
    times = []
    for i in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = learner(images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        learner.update_moving_average()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"img_per_s": round(batch / statistics.median(times[warmup:]), 2)}


def part_throughput(smoke: bool, device: str) -> dict:
    rows = []
    for arch, size, batch in SMOKE_SETTINGS if smoke else GPU_SETTINGS:
        steps, warmup = (2, 1) if smoke else (20, 5)
        ours = run([sys.executable, str(BENCH / "train_throughput.py"), "--arch", arch, "--image-size", str(size),
                    "--batch-size", str(batch), "--steps", str(steps), "--warmup", str(warmup),
                    "--device", device, "--num-workers", "4" if not smoke else "1",
                    "--log-every", "1" if smoke else "5"]
                   + (["--hidden", "64", "--proj", "32"] if smoke else []), 300)
        peer = run([sys.executable, __file__, "--child-peer", f"{arch},{size},{batch},{steps},{warmup},{device}"], 240)
        if not peer["ok"] and "byol_pytorch" in peer.get("error", ""):
            peer["error"] = "byol-pytorch is not installed: pip install byol-pytorch==0.9.1 (no dependencies needed)"
        row = {"arch": arch, "image_size": size, "batch_size": batch, "ours": ours, "byol_pytorch": peer}
        if ours["ok"] and peer["ok"]:
            row["ratio"] = round(ours["img_per_s"] / peer["img_per_s"], 2)
        rows.append(row)
    return {"ok": all(r["ours"]["ok"] for r in rows), "rows": rows}


def part_ddp(tmp: Path, smoke: bool, n_gpus: int, smoke_train: list[str]) -> dict:
    root, run_dir = stl10_files(tmp / "stl-ddp", 256), tmp / "run-ddp"
    on_gpus = not smoke and n_gpus >= 2
    overrides = [o for o in train_overrides(root, run_dir, 5, smoke, smoke_train)
                 if not o.startswith("trainer.device")]
    overrides.append(f"trainer.device={'cuda' if on_gpus else 'cpu'}")
    nproc = n_gpus if on_gpus else 2
    res = run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "main.py", *overrides], 240)
    res["nproc"], res["backend"] = nproc, "nccl" if on_gpus else "gloo (CPU)"
    res["ok"] = res["ok"] and res.get("ranks_in_sync") is True and res.get("world_size") == nproc
    return res


def part_extraction(smoke: bool, device: str) -> dict:
    n = "64" if smoke else "8192"
    args = ["--n-images", n, "--throughput-images", n, "--rounds", "1" if smoke else "2", "--device", device]
    # smoke: no peak-RSS run (a third process importing torch, 7 s of the test's 70; the figure is not read)
    args += ["--image-size", "32", "--batch-size", "16", "--no-memory"] if smoke else [
        "--image-size", "96", "--batch-size", "512", "--precision", "bf16", "--channels-last"]
    return run([sys.executable, str(BENCH / "extract_throughput.py"), *args], 300)


def part_decoding(smoke: bool, train_rates: list[float]) -> dict:
    args = ["--n-images", "4", "--rounds", "1", "--photo-sizes", "200x150"] if smoke else ["--n-images", "60",
                                                                                             "--rounds", "2"]
    res = run([sys.executable, str(BENCH / "decode_throughput.py"), *args], 240)
    if res["ok"] and train_rates:
        # A worker decodes one image per training image; the 224-px row is the expensive one.
        slowest = min(r["pillow-draft"] for r in res["per_worker_img_per_s"])
        res["workers_needed"] = [max(1, round(rate / slowest + 0.5)) for rate in train_rates]
    return res


def table(result: dict) -> str:
    lines = [f"GPU check on {result['device_name']} ({result['seconds']:.0f} s):"]
    for name, part in result["parts"].items():
        lines.append(f"  {name:<13} {'ok' if part.get('ok') else 'FAILED: ' + str(part.get('error', ''))[:200]}")
    for row in result["parts"].get("throughput", {}).get("rows", []):
        ours, peer = row["ours"], row["byol_pytorch"]
        lines.append(f"  train {row['arch']} {row['image_size']} px batch {row['batch_size']}: ours "
                     f"{ours.get('img_per_s', '-')} img/s (augmentation {ours.get('augment_share', '-')} of a step), "
                     f"byol-pytorch {peer.get('img_per_s', peer.get('error', '-'))}, ratio {row.get('ratio', '-')}")
    ext = result["parts"].get("extraction", {})
    if ext.get("ok"):
        lines.append(f"  extraction {ext['img_per_s']} img/s vs encoder alone {ext['encoder_only_img_per_s']} "
                     f"({100 * ext['ratio']:.0f}%)")
    dec = result["parts"].get("decoding", {})
    if dec.get("workers_needed"):
        lines.append(f"  data-loading workers needed per GPU at those rates: {dec['workers_needed']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU settings (what runs without CUDA)")
    ap.add_argument("--smoke-train", nargs="+", default=[], metavar="KEY=VALUE",
                    help="smoke runs only (ignored on a GPU): config overrides on top of its main.py runs' "
                         "(train_resume, ddp), e.g. a smaller network than ResNet-18")
    ap.add_argument("--child-peer", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child_peer:
        arch, size, batch, steps, warmup, device = a.child_peer.split(",")
        print(json.dumps(peer_child(arch, int(size), int(batch), int(steps), int(warmup), device)))
        return {}
    import torch
    sys.path.insert(0, str(ROOT))
    n_gpus = torch.cuda.device_count()
    smoke = a.smoke or n_gpus == 0
    if n_gpus == 0:
        print("no CUDA device visible: the GPU check needs one; running its parts at tiny CPU settings instead",
              flush=True)
    device = "cpu" if smoke else "cuda"
    t0 = time.perf_counter()
    parts: dict = {}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=5 if smoke else 1) as pool:
        tmp = Path(tmp)
        # On a GPU one part at a time (each measures the machine); smoke parts side by side, as
        # nothing they time is read (the CPU run, 2 cores, alone: 63.6 s in turn, 40.1 s side by side).
        started = {"cuda_tests": pool.submit(part_cuda_tests, smoke),
                   "train_resume": pool.submit(part_train_resume, tmp, smoke, a.smoke_train),
                   "throughput": pool.submit(part_throughput, smoke, device),
                   "ddp": pool.submit(part_ddp, tmp, smoke, n_gpus, a.smoke_train),
                   "extraction": pool.submit(part_extraction, smoke, device)}
        parts.update({name: future.result() for name, future in started.items()})
        rates = [r["ours"]["img_per_s"] for r in parts["throughput"]["rows"] if r["ours"].get("ok")]
        parts["decoding"] = part_decoding(smoke, rates)
    result = {"device_name": torch.cuda.get_device_name(0) if n_gpus else "CPU (no CUDA)", "n_gpus": n_gpus,
              "smoke": smoke, "torch": str(torch.__version__), "seconds": round(time.perf_counter() - t0, 1),
              "ok": all(p.get("ok") for p in parts.values()), "parts": parts}
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(table(result), flush=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main().get("ok", True) else 1)
