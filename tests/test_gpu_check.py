"""benchmarks/gpu_check.py without CUDA: one line says so, and every part runs at tiny CPU settings."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_its_parts_without_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=400,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
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
    assert "GPU check on CPU (no CUDA)" in proc.stdout
