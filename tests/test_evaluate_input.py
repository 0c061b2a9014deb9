"""Downstream evaluation, the user-facing edges: bad stores give one clear error naming the store,
and both command-line entry points print their JSON last (exit 2 with one line on bad input)."""
import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from byol.base.errors import StoreError
from byol.evaluate.runner import run_baseline

from testkit import ATTRS, FAST, REPO, SETTINGS, clusters, run_main, write_store


# ---- bad input ----------------------------------------------------------------------------------------

def bad_case(tmp_path, case):
    x, y = clusters(60, seed=0)
    train_dir, test_dir = tmp_path / case / "train", tmp_path / case / "test"
    kwargs = {}
    if case == "dim":
        write_store(test_dir, x[:, :4], y)
    elif case == "encoder":
        write_store(test_dir, x, y, attrs=dict(ATTRS, checkpoint_sha256="cd" * 32))
    elif case == "preprocessing":
        write_store(test_dir, x, y, settings=dict(SETTINGS, image_size=64))
    elif case == "test-unlabelled":
        write_store(test_dir, x, np.full(60, -1))
    elif case == "train-unlabelled":
        kwargs["y"] = np.full(60, -1)
    elif case == "single-class":
        kwargs["y"] = np.where(y >= 0, 2, y)
    elif case == "empty":
        kwargs = {"x": np.zeros((0, 8), np.float32), "y": np.zeros(0, np.int64)}
    write_store(train_dir, kwargs.get("x", x), kwargs.get("y", y))
    if not test_dir.exists():
        write_store(test_dir, x, y)
    if case == "corrupt":
        shard = sorted(train_dir.glob("shard-*.h5"))[0]
        with h5py.File(shard, "r") as f:                    # flip bytes inside the first embeddings chunk
            offset = f["embeddings"].id.get_chunk_info(0).byte_offset
        data = bytearray(shard.read_bytes())
        data[offset:offset + 16] = bytes(b ^ 0xFF for b in data[offset:offset + 16])
        shard.write_bytes(bytes(data))
    return train_dir, test_dir


@pytest.mark.parametrize("case,blamed,words", [
    ("dim", "both", "dim 8 vs 4"), ("encoder", "both", "checkpoint_sha256"),
    ("preprocessing", "both", "settings.image_size 96 vs 64"), ("test-unlabelled", "test", "no labelled rows"),
    ("train-unlabelled", "train", "no labelled rows"), ("single-class", "train", "single class"),
    ("empty", "train", "empty"), ("corrupt", "train", "corrupt")])
def test_bad_input_is_a_clear_store_error(tmp_path, case, blamed, words):
    train, test = bad_case(tmp_path, case)
    with pytest.raises(StoreError) as err:
        run_baseline("knn", train, test, FAST)
    message = str(err.value)
    assert words in message and "\n" not in message
    for role in (("train", "test") if blamed == "both" else (blamed,)):
        assert str({"train": train, "test": test}[role]) in message


def test_corrupt_shard_caught_while_reading_without_verify(tmp_path):
    train, test = bad_case(tmp_path, "corrupt")
    with pytest.raises(StoreError, match=str(train)):
        run_baseline("knn", train, test, replace(FAST, verify=False))


# ---- command line ---------------------------------------------------------------------------------------

def test_cli_entry_points_print_the_json_last_line(separable, capsys):
    # the scripts run in this process (runpy, as __main__): what they print is under test, not the process
    # (that evaluation runs without torch is proven by real processes in test_evaluate.py and test_heads.py)
    train, test = separable
    code, out, err = run_main(REPO / "eval/baselines.py", ["--train", train, "--test", test, "--method", "all",
                                                            "--block-rows", 64, "--C-grid", "0.1,1", "--k-grid", "1,5"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["method"] == "all" and set(summary["top1"]) == {"logreg", "knn", "pca-logreg", "pca-knn"}
    assert [json.loads(line)["method"] for line in lines[:-1]] == ["logreg", "knn", "pca-logreg", "pca-knn"]
    assert all(v == 100.0 for v in summary["top1"].values())
    code, out, err = run_main(REPO / "eval/load_and_train.py", ["--train", train, "--test", test, "--head", "mlp",
                                                                 "--epochs", 3, "--hidden", "16", "--lr", 0.01], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    for key in ("method", "top1", "top5", "n_train", "n_test", "seconds", "streams", "selected", "head_file"):
        assert key in result
    assert result["method"] == "mlp" and result["n_train"] == 300 and result["n_test"] == 100
    assert Path(result["head_file"]) == train.parent / "heads" / "mlp.safetensors"


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    train, test = bad_case(tmp_path, "dim")
    code, out, err = run_main(REPO / "eval/baselines.py", ["--train", train, "--test", test, "--method", "knn"], capsys)
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dim 8 vs 4" in errors[0] and str(train) in errors[0]
