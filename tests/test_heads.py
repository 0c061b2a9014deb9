"""Classification heads (numpy): forward, gradients and AdamW equal torch's on the same weights;
the head file round-trips, loads into torch, and bad files give one clear error; evaluation with
heads never imports torch."""
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from byol.base.errors import CheckpointError
from byol.evaluate.blocks import fit_standardizer, iter_rows
from byol.evaluate.head_file import head_record, load_head, save_head
from byol.evaluate.heads import build_head, cross_entropy, head_outputs
from byol.evaluate.passes import score_blocks
from byol.evaluate.runner import run_head
from byol.evaluate.splits import prepare
from byol.evaluate.training import AdamW, best_epoch, fit_selected

from testkit import ATTRS, FAST, run_cli


def torch_twin(head) -> nn.Sequential:
    """The torch module a head file describes: [Linear, ReLU, Dropout] x hidden, then the classifier."""
    layers, width = [], head.in_dim
    for size in head.hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(head.dropout)]
        width = size
    body = nn.Sequential(*layers)
    model = nn.Module()
    model.body, model.classifier = body, nn.Linear(width, head.n_classes)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in head.state_dict().items()})
    return model


def torch_logits(model, head, x, masks=None):
    h = (torch.from_numpy(x) - torch.from_numpy(head.mean)) / torch.from_numpy(head.std)
    for i in range(len(head.hidden)):
        h = torch.relu(model.body[3 * i](h))
        if masks is not None and masks[i] is not None:
            h = h * torch.from_numpy(masks[i])        # the same dropout draw as numpy's
    return model.classifier(h)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_forward_gradients_and_adamw_steps_equal_torch(dropout):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    head = build_head("mlp", 6, 3, hidden=(7, 5), dropout=dropout, seed=1,
                      mean=rng.standard_normal(6), std=rng.uniform(0.5, 2, 6))
    model = torch_twin(head)
    np.testing.assert_allclose(head.logits(x), torch_logits(model, head, x).detach().numpy(), rtol=1e-5, atol=1e-5)

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    ours = AdamW(head.parameters(), lr=0.01, weight_decay=0.1)
    step_rng = np.random.default_rng(5)
    for step in range(4):
        logits, cache = head.forward_train(x, step_rng)
        loss, grad = cross_entropy(logits, y)
        expected_logits = torch_logits(model, head, x, cache[1])
        expected_loss = nn.functional.cross_entropy(expected_logits, torch.from_numpy(y))
        optimizer.zero_grad()
        expected_loss.backward()
        assert loss == pytest.approx(expected_loss.item(), rel=1e-5)
        grads = head.backward(cache, grad)
        for g, p in zip(grads, model.parameters()):
            np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-4, atol=1e-6)
        optimizer.step()
        ours.step(grads)
        for mine, theirs in zip(head.parameters(), model.parameters()):
            np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-4, atol=1e-6)
    if dropout:
        kept = np.concatenate([m.ravel() for m in cache[1]]) > 0
        assert 0.5 < kept.mean() < 0.9                      # about 1 - p of the units kept
        assert set(np.unique(cache[1][0])) <= {0.0, np.float32(1 / 0.7)}


def test_linear_head_matches_sklearn_logistic_regression(overlapping, tmp_path):
    """Softmax regression by AdamW, unregularised, against lbfgs on the same standardised arrays."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    train, test, (xtr, ytr, xte, yte) = overlapping
    result = run_head("linear", train, test, replace(FAST, val_fraction=0.0, epochs=40, results_dir=str(tmp_path)))
    scaler = StandardScaler().fit(xtr)
    reference = LogisticRegression(C=1e4, max_iter=5000).fit(scaler.transform(xtr), ytr)
    expected = 100 * reference.score(scaler.transform(xte), yte)
    assert abs(result["top1"] - expected) <= 2.0, (result["top1"], expected)
    head, _ = load_head(result["head_file"])
    agree = (head_outputs(head, xte).pred == reference.predict(scaler.transform(xte))).mean()
    assert agree >= 0.9, agree                           # the two differ only on ambiguous points
    # and AdamW got near lbfgs' minimum of the same objective (training cross-entropy: 0.13 vs 0.06)
    optimum = log_loss(ytr, reference.predict_proba(scaler.transform(xtr)))
    assert log_loss(ytr, head_outputs(head, xtr).probs) - optimum < 0.1


def test_epochs_chosen_on_validation_top1_then_loss(separable):
    assert best_epoch([(90.0, 0.5), (95.0, 0.4), (93.0, 0.1)]) == 2
    assert best_epoch([(100.0, 0.9), (100.0, 0.2), (96.0, 0.1), (100.0, 0.3)]) == 2    # saturated: lowest loss
    # on separable clusters 30 validation rows are all right after one epoch: the loss breaks the tie
    result = run_head("mlp", *separable, replace(FAST, epochs=6, hidden=(8,), dropout=0.1))
    selection, epochs = result["selection"], result["selected"]["epochs"]
    assert selection["val_top1"][0] == 100.0 and len(selection["val_loss"]) == 6
    assert selection["val_loss"][epochs - 1] == min(l for t, l in zip(selection["val_top1"], selection["val_loss"])
                                                   if t == max(selection["val_top1"]))
    assert epochs > 1 and result["top1"] >= 95.0


def test_head_file_round_trip_and_torch_reads_it(separable, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    train, test = separable
    data = prepare(train, test, val_fraction=0.1)
    scaler = fit_standardizer(data.train, data.train_mask)
    model, _ = fit_selected(data, replace(FAST, epochs=3, dropout=0.2), "mlp", mean=scaler.mean, std=scaler.scale)
    path = save_head(tmp_path / "h.safetensors", head_record(model, "mlp", data.train.attrs, {"top1": 1.0}))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask        # safetensors' own writer made it 0600
    with safe_open(str(path), framework="np") as f:
        header = f.metadata()
    meta = json.loads(header["head"])
    assert header["format"] == "byol-head" and header["version"] == "2"
    assert meta["kind"] == "mlp" and meta["hidden"] == [32] and meta["store_attrs"] == ATTRS
    assert meta["classes"] == [0, 1, 2, 3, 4] and meta["metrics"] == {"top1": 1.0}
    loaded, meta = load_head(path)
    assert meta["n_classes"] == 5 and loaded.hidden_width == 32
    x = next(iter_rows(data.test, None, 64))["embeddings"]
    a, b = head_outputs(model, x), head_outputs(loaded, x)
    assert a.hidden.shape == (len(x), 32) and a.probs.shape == (len(x), 5)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.pred, b.pred)
    np.testing.assert_allclose(b.probs.sum(1), 1, atol=1e-5)
    # torch reads the same file: the equivalent module gives the same probabilities
    tensors = load_file(str(path))
    twin = torch_twin(loaded).eval()
    twin.load_state_dict({k: v for k, v in tensors.items() if k not in ("mean", "std", "classes")})
    with torch.no_grad():
        probs = torch_logits(twin, loaded, x).softmax(1).numpy()
    np.testing.assert_allclose(probs, b.probs, atol=1e-6)
    assert tensors["classes"].tolist() == [0, 1, 2, 3, 4]
    scored = np.concatenate([p for p, _ in score_blocks(loaded.probabilities, data.test, data.test_mask, 16)])
    np.testing.assert_allclose(scored[:len(x)], b.probs, atol=1e-6)
    # run_head's file reproduces its own test figure; a second run never overwrites it
    result = run_head("linear", train, test, replace(FAST, epochs=3))
    head, meta = load_head(result["head_file"])
    xs, ys = (np.concatenate(v) for v in zip(*((b["embeddings"], b["labels"]) for b in iter_rows(data.test))))
    assert 100 * (head_outputs(head, xs).pred == ys).mean() == pytest.approx(result["top1"])
    assert meta["metrics"]["top1"] == result["top1"] and Path(result["head_file"]).name == "linear.safetensors"
    second = run_head("linear", train, test, replace(FAST, epochs=1))["head_file"]
    assert Path(second).name == "linear-2.safetensors"
    assert load_head(result["head_file"])[1]["metrics"]["top1"] == result["top1"]   # first file unchanged


def test_version_1_head_files_are_refused_naming_the_file(tmp_path):
    """Heads written before the first release (torch.save of a dict) are no longer read: one clear error."""
    torch.save({"format": "byol-head", "version": 1, "kind": "mlp", "in_dim": 6, "hidden": [4], "dropout": 0.1,
                "n_classes": 3, "classes": [2, 5, 7], "mean": torch.arange(6.0), "std": torch.full((6,), 2.0),
                "state_dict": {}, "store_attrs": {}, "metrics": {"top1": 50.0}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old\.pt: a version 1 head file .* retrain the head"):
        load_head(tmp_path / "old.pt")


def test_bad_head_files_name_the_file(tmp_path):
    head = build_head("mlp", 6, 3, hidden=(4,))
    good = save_head(tmp_path / "good.safetensors", head_record(head, "mlp", {}, {}))
    cases = {"missing.safetensors": None, "noise.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
             "text.safetensors": b"hello", "empty.safetensors": b""}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            load_head(tmp_path / name)
    from safetensors.numpy import save_file
    record = head_record(head, "mlp", {}, {})
    save_file(record["tensors"], str(tmp_path / "foreign.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match=r"foreign\.safetensors: not a byol-head"):
        load_head(tmp_path / "foreign.safetensors")
    record["tensors"]["classifier.weight"] = np.zeros((3, 9), np.float32)           # does not fit hidden=[4]
    save_head(tmp_path / "shape.safetensors", record)
    with pytest.raises(CheckpointError, match=r"shape\.safetensors: weights don't fit.*classifier\.weight"):
        load_head(tmp_path / "shape.safetensors")
    record = head_record(head, "mlp", {}, {})
    save_file(record["tensors"], str(tmp_path / "newer.safetensors"),
              metadata={"format": "byol-head", "version": "99", "head": json.dumps(record["meta"])})
    with pytest.raises(CheckpointError, match=r"newer\.safetensors: head file version 99 is newer"):
        load_head(tmp_path / "newer.safetensors")
    assert load_head(good)[0].hidden == [4]


def test_heads_train_save_and_load_without_importing_torch(separable, tmp_path):
    train, test = separable
    script = ("import sys; from byol.evaluate.runner import run_head; "
              f"from byol.evaluate.options import Options; from byol.evaluate.head_file import load_head; "
              f"from byol.evaluate.heads import head_outputs; import numpy as np; "
              f"r = run_head('mlp', {str(train)!r}, {str(test)!r}, Options(epochs=10, hidden=(8,), lr=0.01, batch_size=32, "
              f"results_dir={str(tmp_path / 'r')!r})); h, _ = load_head(r['head_file']); "
              f"head_outputs(h, np.zeros((2, 8), np.float32)); print(r['top1'], 'torch' in sys.modules)")
    proc = run_cli("-c", script)
    assert proc.returncode == 0, proc.stderr[-2000:]
    top1, imported = proc.stdout.split()[-2:]
    assert imported == "False" and float(top1) >= 90.0
