"""benchmarks/gpu_check.py without CUDA: one line says so, and every part runs at tiny CPU settings."""
import json
import sys
from pathlib import Path

import torch

from testkit import TINY_NETWORK, run_main

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_its_parts_on_a_machine_without_a_gpu(tmp_path, capsys, monkeypatch):
    # The script runs in this process (its parts still run as its own child processes): a child of
    # our own would only add seconds of imports. No CUDA for it: device_count() answers 0 here (this
    # process may have counted devices already) and its children inherit CUDA_VISIBLE_DEVICES="".
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # One OpenMP thread a child: on a shared 2-core machine, threads that wait for one another make
    # these tiny steps several times slower; no assertion below depends on the thread count.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sys, "path", list(sys.path))          # the script puts the checkout first
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "gpu_check.json"
    # --smoke-train: its main.py runs (train_resume, ddp) train the tests' tiny network: ResNet-18 writes
    # ~400 MB of checkpoints a run and measures its BN statistics slowly; the plumbing is the same.
    code, stdout, stderr = run_main(ROOT / "benchmarks" / "gpu_check.py",
                                    ["--out", out, "--smoke-train", *TINY_NETWORK], capsys)
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("no CUDA device visible")
    result = json.loads(out.read_text())
    assert json.loads(lines[-1]) == result
    assert result["smoke"] is True and result["n_gpus"] == 0 and result["ok"] is True
    parts = result["parts"]
    assert set(parts) == {"cuda_tests", "train_resume", "throughput", "ddp", "extraction", "decoding"}
    assert all(part["ok"] for part in parts.values()), {k: v for k, v in parts.items() if not v["ok"]}
    assert parts["train_resume"]["steps"] == [2, 3]                        # 2 steps, then --resume to 3
    assert parts["ddp"]["world_size"] == 2 and parts["ddp"]["ranks_in_sync"] is True
    (row,) = parts["throughput"]["rows"]
    assert row["ours"]["img_per_s"] > 0 and row["byol_pytorch"]["img_per_s"] > 0
    assert row["ratio"] == round(row["ours"]["img_per_s"] / row["byol_pytorch"]["img_per_s"], 2)
    assert 0 < row["ours"]["augment_share"] < 1
    assert 0 < parts["extraction"]["ratio"] < 2 and parts["extraction"]["encoder_only_img_per_s"] > 0
    assert parts["decoding"]["workers_needed"] == [max(1, round(row["ours"]["img_per_s"] / min(
        r["pillow-draft"] for r in parts["decoding"]["per_worker_img_per_s"]) + 0.5))]
    assert "GPU check on CPU (no CUDA)" in stdout
