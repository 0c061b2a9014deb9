"""benchmarks/learning_check.py end to end on a tiny image folder the test writes (two colour classes).

The benchmark is run for real on CIFAR-10 (docs/measurements/learning.md); here only its contract is checked: the stages
run, the last line is the JSON the docs document, the margins are computed from the rows, the
untrained-encoder control is the run's encoder-start.pt (the seeded initial network), and the skip flags drop their rows.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from byol.report.verdict import verdict

from testkit import REPO, TINY_NETWORK, run_main

PER_CLASS = 16


def write_folder(root: Path) -> Path:
    """train/ and test/ with a reddish and a bluish class of 32 px noise images."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name, channel in (("red", 0), ("blue", 2)):
            folder = root / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):
                pixels = rng.integers(0, 120, (32, 32, 3), np.uint8)
                pixels[..., channel] += 120
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root / "images"


def run_check(capsys, data: Path, workdir: Path, *flags: str) -> dict:
    """The script run as __main__ in this process (a subprocess would spend seconds importing torch).

    --pca-solver incremental: the default covariance solver eigendecomposes a 3,072 x 3,072 matrix per PCA
    fit (seconds each, four fits a test) where these 32-row stores need an SVD of 32 rows; the rows,
    their files and the margins are the same either way (the solvers' agreement: tests/test_evaluate.py)."""
    argv = ["--data", data, "--workdir", workdir, "--minutes", "0.01", "--batch-size", "8", "--pca-solver",
            "incremental", *flags,
            "network.projection_head.mlp_hidden_size=32", "network.projection_head.projection_size=16",
            "trainer.progress=false"]
    code, out, err = run_main(REPO / "benchmarks" / "learning_check.py", argv, capsys)
    assert code == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("learning_check"))


@pytest.mark.long
def test_learning_check_reports_every_row_and_the_margins(folder, tmp_path, capsys):
    out = run_check(capsys, folder, tmp_path / "work")
    rows = ("linear", "knn", "logreg", "random_init_linear", "random_init_knn", "random_init_bn_linear",
            "random_init_bn_knn", "pixels32_pca_logreg", "pixels32_pca_knn")
    for row in rows:
        assert 0.0 <= out[f"{row}_top1"] <= 100.0
    assert not any(k.startswith("pixels16") for k in out)        # the recipe's 32 px views = the images' size
    # colour alone separates the classes: the pixel baselines must find it
    assert out["pixels32_pca_logreg_top1"] == 100.0
    # the margins are the verdict's (byol/report/verdict.py), as in the pipeline's report, on the files the run wrote
    run = tmp_path / "work" / "runs" / "run"
    results = {key: json.loads((run / folder_name / f"{method}.json").read_text())
               for key, folder_name, method in [
                   ("knn", "results", "knn"), ("logreg", "results", "logreg"),
                   ("start-knn", "random_init_results", "knn"), ("start-logreg", "random_init_results", "logreg"),
                   ("start-bn-knn", "random_init_bn_results", "knn"),
                   ("start-bn-logreg", "random_init_bn_results", "logreg"),
                   ("pca-knn", "pixel32_results", "pca-knn"), ("pca-logreg", "pixel32_results", "pca-logreg")]}
    assert results["pca-logreg"]["pca_solver"] == "incremental"      # --pca-solver reached the PCA
    decided = verdict(results)
    assert out["verdict"] == decided["sentence"] and out["best_control"] == decided["start"]["key"]
    assert (out["margin_over_random_init"], out["interval_over_random_init"]) == \
        (decided["margin_over_start"], decided["interval_over_start"])
    assert out["margin_over_pixels"] == decided["margin_over_pixels"]
    assert out["best_pixel_baseline"] == f"{decided['pixels']['key']} at 32 px"
    low, high = out["interval_over_random_init"]
    assert low <= out["margin_over_random_init"] <= high
    assert out["steps"] >= 1 and out["batch_size"] == 8 and out["image_size"] == 32 and out["small_stem"] is False
    assert out["recipe"] == "short_cpu.yaml" and out["base_tau"] == 0.99       # the recipe's m
    assert out["eval_images"] == {"train": 2 * PER_CLASS, "test": 2 * PER_CLASS}

    # the control is the run's own starting weights (the untrained network of its seed, the file
    # training wrote at step 0), as a plain torchvision ResNet-18
    init = torch.load(run / "encoder-start.pt", weights_only=True)
    trained = torch.load(run / "encoder.pt", weights_only=True)
    init_step = json.loads((run / "encoder-start.json").read_text())["step"]
    trained_step = json.loads((run / "encoder.json").read_text())["step"]
    assert init_step == 0 and trained_step == out["steps"]
    assert not torch.equal(init["layer1.0.conv1.weight"],
                           trained["layer1.0.conv1.weight"])
    from byol.config import load_config
    from byol.pretrain.setup import build_networks
    cfg = load_config(run / "config.yaml", [])
    torch.manual_seed(cfg.trainer.seed)
    online, _ = build_networks(cfg)
    for key, value in online.encoder.state_dict().items():
        assert torch.equal(init[key], value), key
    resnet = torchvision.models.resnet18()
    resnet.fc = torch.nn.Identity()
    resnet.load_state_dict(init)
    # the stronger control: the same weights, BN statistics measured on the training images
    init_bn = torch.load(run / "encoder-start-bn.pt", weights_only=True)
    for key, value in init.items():
        measured = key.endswith(("running_mean", "running_var"))
        assert torch.equal(init_bn[key], value) != measured or key.endswith("num_batches_tracked"), key

    # a second row with a fixed step count and a probe subset reuses the baselines' stores
    again = run_check(capsys, folder, tmp_path / "work", "--steps", "2", "--eval-subset", "8", "--run-name", "row2")
    assert again["steps"] == 2 and again["eval_images"] == {"train": 16, "test": 8}
    assert again["time_budget"] is None                      # --steps: no time budget
    assert out["time_budget"]["max_time"] == "0.6s" and out["time_budget"]["steps"] == out["steps"]
    starts = sorted(p.name for p in (tmp_path / "work" / "baselines").glob("start-*"))
    # same network, seed and images: the same two controls (initial and measured BN), one set of stores each
    assert len(starts) == 2


def test_learning_check_skips_the_rows_it_is_told_to(folder, tmp_path, capsys):
    # one step: what is skipped does not depend on how long it trained (the time budget: the test above)
    # the tiny network: the rows, not the architecture, are the subject here (ResNet-18: the test above)
    out = run_check(capsys, folder, tmp_path / "work", "--no-pixel-baselines", "--no-random-init-baseline",
                    "--steps", "1", *TINY_NETWORK)
    assert {"linear_top1", "knn_top1"} <= out.keys()
    assert not any(k.startswith(("pixels", "random_init_", "margin", "interval", "best_")) or k == "verdict"
                   for k in out)
    assert not (tmp_path / "work" / "baselines").exists()
    # someone else's encoder file (byol-pytorch's, saved by peer_learning.py --save) gets the same probes:
    # this run's own encoder, scored that way, gives this run's figures
    scored = run_check(capsys, folder, tmp_path / "work", "--no-pixel-baselines", "--run-name", "scored",
                       "--encoder", str(tmp_path / "work" / "runs" / "run" / "encoder.pt"))
    assert {k: scored[k] for k in ("linear_top1", "knn_top1", "logreg_top1")} == \
        {k: out[k] for k in ("linear_top1", "knn_top1", "logreg_top1")}
    assert scored["encoder"].endswith("encoder.pt") and "steps" not in scored
