"""Did pretraining help? The starting weights as a control (encoder-start.pt), the verdict, the
neighbour gallery and the TensorBoard projector (issue: every report answers it)."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from byol.config import load_config
from byol.encoders.files import load_encoder
from byol.pretrain import loop
from byol.report.gallery import query_rows, write_gallery
from byol.report.projector import stratified_rows
from byol.report.report_command import write_report

from testkit import TINY, TINY_RESNET, write_store


def _train_capturing_start(run_dir: Path, *overrides: str, base: list[str] = TINY) -> dict:
    """Train `base` for 2 steps; returns the online encoder's state as the first step received it."""
    seen = {}
    real_step = loop.train_step

    def spy(run, images, step, losses):
        if not seen:
            seen.update({k: v.detach().clone() for k, v in run.online.encoder.state_dict().items()})
        return real_step(run, images, step, losses)

    loop.train_step = spy
    try:
        loop.train(load_config(None, base + [f"trainer.run_dir={run_dir}", "trainer.max_steps=2", *overrides]))
    finally:
        loop.train_step = real_step
    return seen


def _assert_bitwise_equal(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(state[k], v.cpu()), k


def test_start_file_is_the_network_before_the_first_step(tmp_path):
    before_first_step = _train_capturing_start(tmp_path / "run")
    state, meta = load_encoder(tmp_path / "run" / "encoder-start.pt")
    _assert_bitwise_equal(state, before_first_step)
    assert meta["step"] == 0 and json.loads((tmp_path / "run" / "encoder-start.json").read_text())["step"] == 0
    trained, _ = load_encoder(tmp_path / "run" / "encoder.pt")     # two SGD steps moved the weights
    assert any(not torch.equal(trained[k], state[k]) for k in state if state[k].is_floating_point())


def test_start_file_of_a_fine_tuned_run_is_the_checkpoint_it_started_from(trained_run, tmp_path):
    pretrained = trained_run / "encoder.pt"
    before_first_step = _train_capturing_start(tmp_path / "ft", f"network.fine_tune_from={pretrained}",
                                               base=TINY_RESNET)          # trained_run is a ResNet-18
    start, _ = load_encoder(tmp_path / "ft" / "encoder-start.pt")
    _assert_bitwise_equal(start, before_first_step)
    _assert_bitwise_equal(start, load_encoder(pretrained)[0])      # the control is what BYOL started from


def _digests(run: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.glob("encoder-start.*"))}


def test_a_resumed_run_keeps_the_start_file_of_its_first_start(trained_run_copy):
    run = trained_run_copy
    before = _digests(run)
    assert set(before) == {"encoder-start.pt", "encoder-start.safetensors", "encoder-start.json"}
    from byol.pretrain.checkpoint import resume_config
    summary = loop.train(resume_config(run, ["trainer.max_steps=3"]), resume=run)
    assert summary["steps"] == 3 and _digests(run) == before


DIGITS_ATTRS = {"config": {"data": {"name": "digits"}}, "image_size": 16, "encoder": "test",
                "classes": [str(d) for d in range(10)]}


def test_gallery_neighbours_are_the_knn_codes_on_a_store_with_known_neighbours(tmp_path):
    # Queries: one per class along axis c. Train rows of class c lie at angle j * 5 degrees from axis
    # c (j = 0..6), in shuffled order: the 5 nearest to query c are its rows with j = 0..4, in order.
    rng = np.random.default_rng(0)
    rows, labels, angle_of = [], [], []
    for c in range(3):
        for j in range(7):
            v = np.zeros(6, np.float32)
            v[c], v[3 + c] = np.cos(np.radians(5 * j)), np.sin(np.radians(5 * j))
            rows.append(v), labels.append(c), angle_of.append(j)
    order = rng.permutation(len(rows))
    x_train, y_train, j_train = np.stack(rows)[order], np.array(labels)[order], np.array(angle_of)[order]
    indices = 100 + np.arange(len(order)) * 3      # dataset items differ from row numbers on purpose
    train = write_store(tmp_path / "s" / "train", x_train, y_train, 8, indices=indices,
                        attrs={**DIGITS_ATTRS, "split": "train"})
    x_test = np.eye(6, dtype=np.float32)[:3] * 2.0
    test = write_store(tmp_path / "s" / "test", x_test, np.arange(3), 2, indices=[5, 6, 7],
                       attrs={**DIGITS_ATTRS, "split": "test"})
    # The starting weights' stores hold the same vectors in other row orders: its panel must find the
    # same neighbours (as dataset items), for the same queries, however its rows are ordered.
    shuffle = rng.permutation(len(order))
    start_train = write_store(tmp_path / "start" / "train", x_train[shuffle], y_train[shuffle], 8,
                              indices=indices[shuffle], attrs={**DIGITS_ATTRS, "split": "train"})
    start_test = write_store(tmp_path / "start" / "test", x_test[::-1].copy(), np.arange(3)[::-1].copy(), 2,
                             indices=[7, 6, 5], attrs={**DIGITS_ATTRS, "split": "test"})
    png = write_gallery({"byol_train": train, "byol_test": test, "start_train": start_train,
                         "start_test": start_test}, tmp_path)
    assert png.stat().st_size > 5000
    listed = json.loads((tmp_path / "neighbors.json").read_text())
    assert listed["queries"] == [5, 6, 7] and listed["query_labels"] == [0, 1, 2]
    for c in range(3):
        expected = [int(indices[np.flatnonzero((y_train == c) & (j_train == j))[0]]) for j in range(5)]
        assert listed["neighbours"]["BYOL"][c] == expected
        assert listed["neighbours"]["starting weights"][c] == expected


def test_gallery_refuses_stores_of_different_images(tmp_path):
    from byol.base.errors import StoreError
    x = np.eye(4, dtype=np.float32)
    train = write_store(tmp_path / "b" / "train", x, np.arange(4), 4, attrs={**DIGITS_ATTRS, "split": "train"})
    test = write_store(tmp_path / "b" / "test", x[:2], np.arange(2), 2, indices=[0, 1],
                       attrs={**DIGITS_ATTRS, "split": "test"})
    other = write_store(tmp_path / "s" / "test", x[:2], np.arange(2), 2, indices=[8, 9],
                        attrs={**DIGITS_ATTRS, "split": "test"})
    with pytest.raises(StoreError, match="holds no row for dataset item 0"):
        write_gallery({"byol_train": train, "byol_test": test, "start_train": train, "start_test": other}, tmp_path)


def test_query_and_projector_rows():
    labels = np.repeat([3, 1, 2], [50, 30, 20])
    assert query_rows(labels).tolist() == [50, 80, 0]          # first row of classes 1, 2, 3
    assert query_rows(np.full(100, -1), 4).tolist() == [0, 33, 66, 99]
    rows = stratified_rows(labels, 10)
    assert len(rows) == 10 and np.bincount(labels[rows], minlength=4).tolist() == [0, 3, 2, 5]


@pytest.mark.long
def test_pipeline_report_has_the_control_the_verdict_the_gallery_and_the_projector(pipeline_run, tmp_path):
    run, out = pipeline_run
    top1, v = out["top1"], out["verdict"]
    assert {"start-logreg", "start-knn", "start-bn-logreg", "start-bn-knn"} <= set(top1)   # both controls
    assert v["byol"]["key"] in ("logreg", "knn") and v["start"]["key"].startswith("start-")
    assert v["margin_over_start"] == round(top1[v["byol"]["key"]] - top1[v["start"]["key"]], 2)
    assert v["margin_over_pixels"] == round(top1[v["byol"]["key"]] - top1[v["pixels"]["key"]], 2)
    low, high = v["interval_over_start"]                  # every probe left its per-image predictions
    assert low <= v["margin_over_start"] <= high and "95% interval" in v["sentence"]
    report = (run / "report.md").read_text()
    assert f"**Verdict:** {v['sentence']}" in report and "starting weights + kNN" in report
    assert "starting weights, BN statistics measured + kNN" in report and "paired bootstrap" in report
    assert (run / "neighbors.png").stat().st_size > 5000 and "neighbors.png" in report
    listed = json.loads((run / "neighbors.json").read_text())
    assert len(listed["queries"]) == 10 and set(listed["neighbours"]) == {"BYOL", "starting weights"}

    # The projector, read back by TensorBoard's own reader.
    from google.protobuf import text_format
    from tensorboard.plugins.projector import projector_config_pb2
    from tensorboard.plugins.projector.projector_plugin import _read_tensor_tsv_file
    config = text_format.Parse((run / "tensorboard" / "projector_config.pbtxt").read_text(),
                               projector_config_pb2.ProjectorConfig())
    assert [e.tensor_name.split(":")[0] for e in config.embeddings] == ["byol", "start"]
    for e in config.embeddings:
        tensor = _read_tensor_tsv_file(str(run / "tensorboard" / e.tensor_path))
        assert tensor.shape == (360, 512)                        # the digits' test split, 512-d
        names = (run / "tensorboard" / e.metadata_path).read_text().split()
        assert len(names) == 360 and set(names) == {str(d) for d in range(10)}
        assert (run / "tensorboard" / e.sprite.image_path).stat().st_size > 1000

    # A run directory from before the control: the report still comes, and says what is missing.
    old = Path(shutil.copytree(run, tmp_path / "old"))
    info = json.loads((old / "pipeline.json").read_text())
    info["result_files"] = {k: f for k, f in info["result_files"].items() if not k.startswith("start-")}
    info["stores"] = {k: s for k, s in info["stores"].items() if not k.startswith("start_")}
    (old / "pipeline.json").write_text(json.dumps(info))
    for f in old.glob("encoder-start.*"):
        f.unlink()
    text = write_report(old).read_text()
    assert "control is missing" in text and "starting weights + kNN" not in text
    assert set(json.loads((old / "neighbors.json").read_text())["neighbours"]) == {"BYOL"}


def test_the_report_says_what_is_missing_when_the_gallery_cannot_be_drawn(pipeline_run, tmp_path, monkeypatch):
    from byol.base.errors import DataError
    import byol.report.gallery
    run = Path(shutil.copytree(pipeline_run[0], tmp_path / "run"))
    pipeline = json.loads((run / "pipeline.json").read_text())
    pipeline["stores"] = {k: v.replace(str(pipeline_run[0]), str(run)) for k, v in pipeline["stores"].items()}
    (run / "pipeline.json").write_text(json.dumps(pipeline))

    def gone(*args, **kwargs):
        raise DataError("image folder '/data/moved' not found")
    monkeypatch.setattr(byol.report.gallery, "write_gallery", gone)
    (run / "neighbors.png").unlink()
    report = write_report(run).read_text()
    assert "*No neighbour gallery or projector: image folder '/data/moved' not found*" in report
    assert "neighbors.png" not in report and not (run / "neighbors.png").exists()
