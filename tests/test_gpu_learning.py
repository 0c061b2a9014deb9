"""benchmarks/gpu_learning.py without CUDA: --pack on a tiny CIFAR-layout tar the test writes, then
the smoke run on what it packed; the JSON holds every field the GPU run fills."""
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from testkit import TINY_NETWORK, run_main

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_learning.py"

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


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_pack_then_smoke(tmp_path, capsys, monkeypatch):
    # The script runs in this process, as `python benchmarks/gpu_learning.py ARGS` would (its exit
    # status and output included): a child process would add seconds of imports to each call.
    monkeypatch.setattr(sys, "path", list(sys.path))          # the script puts the checkout first
    monkeypatch.setenv("TQDM_DISABLE", "1")                   # it sets this for itself: restored after
    source, packed = write_tar(tmp_path / "cifar.tar", n_train=10, n_test=5), tmp_path / "gpu_data" / "cifar10"
    pack = ["--pack", "--source", source, "--data", packed, "--train-per-class", 8, "--test-per-class", 4]
    code, stdout, stderr = run_main(SCRIPT, pack, capsys)
    assert code == 0, stderr[-3000:]
    first = last_json(stdout)
    assert first["reused"] is False and first["images"] == {"train": 24, "test": 12}
    assert first["classes"] == sorted(CLASSES)
    assert sorted(p.name for p in (packed / "train" / "red").iterdir()) == [f"{i:04d}.jpg" for i in range(8)]
    assert (packed / "train" / "red" / "0000.jpg").read_bytes() == \
        tarfile.open(source).extractfile("cifar10/train/red/0000.jpg").read()       # bytes as they are
    assert first["bytes"] == sum(p.stat().st_size for p in packed.rglob("*.jpg"))
    assert not [p for p in packed.parent.iterdir() if p.name != "cifar10"]         # no temp folder left
    assert last_json(run_main(SCRIPT, pack, capsys)[1])["reused"] is True        # idempotent
    other = last_json(run_main(SCRIPT, [*pack[:-1], 3], capsys)[1])               # other counts: repacked
    assert other["reused"] is False and other["images"] == {"train": 24, "test": 9}
    assert len(list((packed / "test").rglob("*.jpg"))) == 9

    out = tmp_path / "gpu_learning.json"
    # The tests' tiny network (a recipe override, as any run may add): ResNet-18's checkpoints and
    # feature passes cost seconds, and the smoke run proves the stages' plumbing, not the network.
    # One thread for torch and BLAS: on a shared 2-core machine, threads that wait for one another
    # make tiny work many times slower (the pixel PCA's 768 x 768 eigh: 6 s, not 0.2 s); nothing
    # below depends on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            code, stdout, stderr = run_main(SCRIPT, ["--smoke", "--data", packed, "--workdir", tmp_path / "work",
                                                     "--out", out, "--smoke-per-class", 8, *TINY_NETWORK], capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    result = json.loads(out.read_text())
    assert last_json(stdout) == result
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
    assert "GPU learning proof on CPU (smoke)" in stdout
    # without --smoke, no CUDA is a one-line error (the device check must not pass for a GPU run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, stdout, stderr = run_main(SCRIPT, ["--data", packed, "--workdir", tmp_path / "work2", "--out",
                                             tmp_path / "refused.json"], capsys)
    assert code == 1 and not (tmp_path / "refused.json").exists()
    assert stderr.strip().splitlines() == ["error: no CUDA device visible: the GPU learning proof needs one "
                                           "(--smoke runs its stages at tiny CPU settings)"]
    # the untrained rows come from the run's own step-0 encoder
    start = json.loads((tmp_path / "work" / "run" / "encoder-start.json").read_text())
    assert start["step"] == 0
