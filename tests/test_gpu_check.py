"""benchmarks/gpu_check.py without CUDA: one line says so, and every part runs at tiny CPU settings."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import warm_process
from testkit import TINY_NETWORK

ROOT = Path(__file__).resolve().parents[1]


class WarmSubprocess:
    """The script's `subprocess`, as much as it uses: its `python ...` parts start as warm forks
    (tests/warm_process.py), not cold interpreters; what run() does with their results is unchanged."""
    TimeoutExpired = subprocess.TimeoutExpired

    @staticmethod
    def run(cmd, *, timeout, cwd, env, capture_output, text):
        assert cmd[0] == sys.executable and capture_output and text, cmd
        ran = warm_process.run(cmd[1:], cwd=cwd, env=env, timeout=timeout)
        return subprocess.CompletedProcess(cmd, ran.returncode, ran.stdout, ran.stderr)


@pytest.mark.long
def test_gpu_check_runs_its_parts_on_a_machine_without_a_gpu(tmp_path, capsys, monkeypatch):
    # The script's main() in this process, its parts in processes of their own (warm forks: 8 cold
    # starts would add about 50 s of imports). No CUDA for it: device_count() answers 0 here, so it
    # runs the smoke parts, each on the CPU by its own arguments (trainer.device=cpu, --device cpu).
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(gpu_check, "subprocess", WarmSubprocess)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(sys, "path", list(sys.path))          # the script puts the checkout first
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "gpu_check.json"
    # --smoke-train: its main.py runs (train_resume, ddp) train the tests' tiny network: ResNet-18 writes
    # ~400 MB of checkpoints a run and measures its BN statistics slowly; the plumbing is the same.
    returned = gpu_check.main(["--out", str(out), "--smoke-train", *TINY_NETWORK])
    stdout, stderr = capsys.readouterr()
    assert returned["ok"], stdout[-3000:] + stderr[-3000:]
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
