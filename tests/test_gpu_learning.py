"""benchmarks/gpu_learning.py without CUDA: --pack on a tiny CIFAR-layout tar the test writes, then
the smoke run on what it packed; the JSON holds every field the GPU run fills."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from testkit import run_cli

CLASSES = ("red", "green", "blue")
TOP1 = {"byol-logreg", "byol-knn", "start-logreg", "start-knn", "pixels-logreg", "pixels-knn"}
FIELDS = {"device_name", "smoke", "torch", "budget_s", "images", "steps", "epochs", "precision",
          "final_loss", "seconds", "gpu_busy_share", "batch_size", "img_per_s", "img_per_s_steady",
          "num_workers", "image_size", "top1", "margins", "target_knn_top1", "target_met", "overrides"}


def write_tar(path: Path, n_train: int, n_test: int) -> Path:
    """cifar10/{train,test}/<class>/NNNN.jpg: 32 px JPEGs, each class tinted by its own channel."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for split, n in (("train", n_train), ("test", n_test)):
            for channel, cls in enumerate(CLASSES):
                for i in range(n):
                    pixels = rng.integers(0, 120, (32, 32, 3), np.uint8)
                    pixels[..., channel] += 120
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
                    info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def test_pack_then_smoke(tmp_path):
    source, packed = write_tar(tmp_path / "cifar.tar", n_train=10, n_test=5), tmp_path / "gpu_data" / "cifar10"
    pack = ["benchmarks/gpu_learning.py", "--pack", "--source", source, "--data", packed,
            "--train-per-class", 8, "--test-per-class", 4]
    done = run_cli(*pack, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    first = done.last_json
    assert first["reused"] is False and first["images"] == {"train": 24, "test": 12}
    assert first["classes"] == sorted(CLASSES)
    assert sorted(p.name for p in (packed / "train" / "red").iterdir()) == [f"{i:04d}.jpg" for i in range(8)]
    assert (packed / "train" / "red" / "0000.jpg").read_bytes() == \
        tarfile.open(source).extractfile("cifar10/train/red/0000.jpg").read()       # bytes as they are
    assert first["bytes"] == sum(p.stat().st_size for p in packed.rglob("*.jpg"))
    assert not [p for p in packed.parent.iterdir() if p.name != "cifar10"]         # no temp folder left
    assert run_cli(*pack, timeout=60).last_json["reused"] is True                  # idempotent
    other = run_cli(*pack[:-1], 3, timeout=60).last_json                            # other counts: repacked
    assert other["reused"] is False and other["images"] == {"train": 24, "test": 9}
    assert len(list((packed / "test").rglob("*.jpg"))) == 9

    out = tmp_path / "gpu_learning.json"
    done = run_cli("benchmarks/gpu_learning.py", "--smoke", "--data", packed, "--workdir", tmp_path / "work",
                   "--out", out, "--smoke-per-class", 8, timeout=300, env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert done.last_json == result
    assert set(result) == FIELDS
    assert result["smoke"] is True and result["gpu_busy_share"] is None and result["steps"] == 3
    assert result["images"] == {"train": 24, "test": 9} and result["image_size"] == 16
    assert result["epochs"] == round(3 * 8 / 24, 2) and result["img_per_s"] > 0
    assert set(result["seconds"]) == {"pretrain", "extract", "probes", "total"}
    top1 = result["top1"]
    assert set(top1) == TOP1 and all(0 <= v <= 100 for v in top1.values())
    assert result["margins"] == {f"{m}_over_{b}": round(top1[f"byol-{m}"] - top1[f"{b}-{m}"], 2)
                                 for m in ("logreg", "knn") for b in ("start", "pixels")}
    assert result["target_met"] is (top1["byol-knn"] >= 80.0)
    assert "GPU learning proof on CPU (smoke)" in done.stdout
    # without --smoke, no CUDA is a one-line error (the device check must not pass for a GPU run)
    refused = run_cli("benchmarks/gpu_learning.py", "--data", packed, "--workdir", tmp_path / "work2", "--out",
                      tmp_path / "refused.json", timeout=120, env={"CUDA_VISIBLE_DEVICES": ""})
    assert refused.returncode == 1 and not (tmp_path / "refused.json").exists()
    assert refused.stderr.strip().splitlines() == ["error: no CUDA device visible: the GPU learning proof needs one "
                                                   "(--smoke runs its stages at tiny CPU settings)"]
    # the untrained rows come from the run's own step-0 encoder
    start = json.loads((tmp_path / "work" / "run" / "encoder-start.json").read_text())
    assert start["step"] == 0
