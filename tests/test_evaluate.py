"""Downstream evaluation on feature stores: known answers, agreement with scikit-learn, honest
selection, results files (heads in detail: test_heads.py; bad input and the command lines:
test_evaluate_input.py)."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from byol.base import knn as knn_core
from byol.base.knn import running_topk, uniform_vote, weighted_vote
from byol.evaluate import neighbors
from byol.evaluate.blocks import fit_standardizer, iter_rows, rebatch
from byol.evaluate.logreg import evaluate_logreg
from byol.evaluate.neighbors import evaluate_knn
from byol.evaluate.pca import fit_projector
from byol.evaluate.results import Tally, write_results
from byol.evaluate.runner import run_baseline, run_head
from byol.evaluate.splits import carve_validation, prepare

from testkit import FAST, clusters, run_cli, write_store


def predictions(scores_iter):
    scores, labels = zip(*scores_iter)
    return np.concatenate(scores), np.concatenate(labels)


# ---- known answers --------------------------------------------------------------------------------

@pytest.mark.parametrize("metric,weighting", [("cosine", "temperature"), ("euclidean", "uniform"),
                                              ("cosine", "uniform"), ("euclidean", "temperature")])
def test_knn_separable_clusters_is_perfect(separable, tmp_path, metric, weighting):
    opts = replace(FAST, metric=metric, knn_weighting=weighting, results_dir=str(tmp_path / "r"))
    result = run_baseline("knn", *separable, opts)
    assert result["top1"] == 100.0 and result["top5"] == 100.0
    assert result["streams"] is True and result["selection"]["on"] == "validation"
    assert result["selected"]["k"] in opts.k_grid


def test_heads_logreg_and_pca_on_separable_clusters(separable, tmp_path):
    opts = replace(FAST, results_dir=str(tmp_path / "r"))
    for kind in ("mlp", "linear"):
        result = run_head(kind, *separable, opts)
        assert result["top1"] >= 99.0, result
        assert 1 <= result["selected"]["epochs"] <= opts.epochs
        assert len(result["selection"]["val_top1"]) == opts.epochs
    for method in ("logreg", "pca-logreg", "pca-knn"):
        result = run_baseline(method, *separable, opts)
        assert result["top1"] >= 99.0, result
    assert result["pca_components"] == 8                # capped at the feature dimension


def test_logreg_falls_back_to_streaming_over_the_memory_budget(separable, tmp_path):
    opts = replace(FAST, max_memory_mb=1e-4, results_dir=str(tmp_path / "r"))
    result = run_baseline("logreg", *separable, opts)
    assert result["solver"].startswith("streaming") and result["streams"] is True
    assert result["top1"] >= 99.0
    result = run_baseline("logreg", *separable, replace(opts, max_memory_mb=64))
    assert result["solver"] == "lbfgs" and result["streams"] is False


def test_streaming_sgd_logreg_is_close_to_lbfgs_and_never_imports_torch(overlapping, tmp_path):
    train, test, _ = overlapping
    exact = run_baseline("logreg", train, test, replace(FAST, C=1.0, results_dir=str(tmp_path / "a")))
    # SGD over 400 rows moves by a few points with the seed (shuffle, validation split: 90.7-95.3 over seeds 0-7 where
    # lbfgs gets 95.3): compare the mean of three seeds
    runs = [run_baseline("logreg", train, test, replace(FAST, C=1.0, max_memory_mb=1e-4, seed=seed,
                                                        results_dir=str(tmp_path / f"b{seed}")))
            for seed in range(3)]
    assert exact["solver"] == "lbfgs" and all(r["solver"].startswith("streaming SGD") for r in runs)
    assert all(r["selected"]["C"] == 1.0 and 1 <= r["selected"]["passes"] <= FAST.epochs for r in runs)
    sgd_top1 = np.mean([r["top1"] for r in runs])
    assert abs(sgd_top1 - exact["top1"]) <= 3.0, (sgd_top1, exact["top1"])
    script = ("import sys; from byol.evaluate.runner import run_baseline; "
              f"from byol.evaluate.options import Options; "
              f"r = run_baseline('pca-logreg', {str(train)!r}, {str(test)!r}, Options(max_memory_mb=1e-4, epochs=2, "
              f"pca_components=4, results_dir={str(tmp_path / 'c')!r})); print(r['solver'], 'torch' in sys.modules)")
    proc = run_cli("-c", script)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "False", proc.stderr[-2000:]


# ---- agreement with scikit-learn on the same arrays in memory -------------------------------------

def test_streaming_scaler_and_logreg_equal_sklearn_in_memory(overlapping):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, test, (xtr, ytr, xte, yte) = overlapping
    data = prepare(train, test, val_fraction=0.0)
    scaler = fit_standardizer(data.train, data.train_mask, block_rows=16)
    reference = StandardScaler().fit(xtr)
    np.testing.assert_allclose(scaler.mean, reference.mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scaler.scale, reference.scale_, rtol=1e-6)
    scores, _ = evaluate_logreg(data, replace(FAST, val_fraction=0.0, C=1.0), scaler)
    probs, labels = predictions(scores)
    model = LogisticRegression(C=1.0, max_iter=1000).fit(reference.transform(xtr), ytr)
    expected = model.predict_proba(reference.transform(xte))
    np.testing.assert_array_equal(labels, yte)
    np.testing.assert_allclose(probs, expected, atol=1e-3)
    np.testing.assert_array_equal(probs.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_streaming_knn_equals_sklearn(overlapping, monkeypatch, metric):
    from sklearn.neighbors import KNeighborsClassifier

    monkeypatch.setattr(neighbors, "QUERY_BYTES", 40 * 10 * 4)    # 40-query chunks: several bank passes
    monkeypatch.setattr(knn_core, "SUB_ROWS", 7)
    train, test, (xtr, ytr, xte, yte) = overlapping
    data = prepare(train, test, val_fraction=0.0)
    opts = replace(FAST, val_fraction=0.0, k=7, metric=metric, knn_weighting="uniform")
    votes, labels = predictions(evaluate_knn(data, opts)[0])
    reference = KNeighborsClassifier(n_neighbors=7, metric=metric, algorithm="brute").fit(xtr, ytr)
    np.testing.assert_array_equal(labels, yte)
    np.testing.assert_array_equal(data.classes[votes.argmax(1)], reference.predict(xte))
    np.testing.assert_allclose(votes / 7, reference.predict_proba(xte))


def test_temperature_knn_of_the_probe_and_the_training_monitor_equals_sklearn(overlapping, tmp_path):
    """The weighted kNN every curve and verdict reads (cosine, k=200 neighbours voting exp(sim / 0.07), Wu
    et al. 2018), recomputed independently by scikit-learn on the same vectors: the evaluation stage's
    probe on stores and the training monitor's on tensors give scikit-learn's predictions."""
    from sklearn.neighbors import KNeighborsClassifier
    from byol.pretrain.monitor import weighted_knn_scores
    train, test, (xtr, ytr, xte, yte) = overlapping
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    reference = KNeighborsClassifier(n_neighbors=200, metric="cosine", algorithm="brute",
                                     weights=lambda d: np.exp((1.0 - d) / 0.07)).fit(unit(xtr), ytr)
    expected = reference.predict(unit(xte))
    assert 0.3 < (expected == yte).mean() < 0.95                     # a set where the neighbours matter
    data = prepare(train, test, val_fraction=0.0)
    opts = replace(FAST, val_fraction=0.0, k=200, metric="cosine", knn_weighting="temperature", temperature=0.07)
    votes, _ = predictions(evaluate_knn(data, opts)[0])
    np.testing.assert_array_equal(data.classes[votes.argmax(1)], expected)
    monitor = weighted_knn_scores(torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), 6)
    np.testing.assert_array_equal(monitor.argmax(1).numpy(), expected)


def test_running_topk_equals_brute_force():
    rng = np.random.default_rng(0)
    bank, queries = rng.standard_normal((103, 5)).astype(np.float32), rng.standard_normal((9, 5)).astype(np.float32)
    labels = np.arange(103)
    blocks = ((bank[i:i + 10], labels[i:i + 10]) for i in range(0, 103, 10))
    scores, found = running_topk(blocks, queries, 12, "euclidean")
    dist = ((queries[:, None] - bank[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(found, np.argsort(dist, axis=1)[:, :12])
    np.testing.assert_allclose((queries ** 2).sum(1)[:, None] - scores, np.sort(dist, 1)[:, :12], atol=1e-4)


@pytest.mark.parametrize("solver", ["covariance", "incremental"])
def test_streaming_pca_logreg_close_to_sklearn_pca_logreg(overlapping, solver):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, test, (xtr, ytr, xte, yte) = overlapping
    data = prepare(train, test, val_fraction=0.0)
    projector, info = fit_projector(data.train, data.train_mask, 5, block_rows=16, solver=solver)
    probs, _ = predictions(evaluate_logreg(data, replace(FAST, val_fraction=0.0, C=1.0), projector)[0])
    scaler = StandardScaler().fit(xtr)
    pca = PCA(5).fit(scaler.transform(xtr))
    model = LogisticRegression(C=1.0, max_iter=1000).fit(pca.transform(scaler.transform(xtr)), ytr)
    expected = model.predict(pca.transform(scaler.transform(xte)))
    assert info["pca_components"] == 5 and info["pca_solver"] == solver
    assert abs(info["pca_explained_variance"] - pca.explained_variance_ratio_.sum()) < 0.02
    assert (probs.argmax(1) == expected).mean() >= 0.95
    assert abs((probs.argmax(1) == yte).mean() - (expected == yte).mean()) <= 0.03
    if solver == "covariance":                     # exact PCA: same components and signs as sklearn's
        np.testing.assert_allclose(projector.components_t.T, pca.components_, atol=1e-4)
        np.testing.assert_allclose(projector(xte), pca.transform(scaler.transform(xte)), atol=1e-3)
        np.testing.assert_array_equal(probs.argmax(1), expected)


# ---- votes and metrics ------------------------------------------------------------------------------

def test_weighted_vote_hand_computed():
    sim = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, -0.4]])
    labels = np.array([[0, 1, 0], [2, 2, 1]])
    expected = np.array([[np.exp(1.8) + np.exp(0.2), np.exp(1.0), 0],
                         [0, np.exp(-0.8), 2 * np.exp(0.4)]])
    np.testing.assert_allclose(weighted_vote(sim, labels, 3, 0.5), expected)
    np.testing.assert_array_equal(uniform_vote(labels, 3), [[2, 1, 0], [0, 1, 2]])
    # byol.pretrain.monitor (the training-time kNN monitor) uses the same vote: one neighbour per class, k=2
    from byol.pretrain.monitor import weighted_knn_scores
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    scores = weighted_knn_scores(train, torch.tensor([0, 1, 2]), torch.tensor([[1.0, 1.0]]), 3, k=2,
                                 temperature=0.5)
    c = np.exp(np.sqrt(0.5) / 0.5)
    np.testing.assert_allclose(scores.numpy(), [[c, c, 0]], rtol=1e-5)


def test_top5_only_with_at_least_five_classes(tmp_path):
    for classes, has_top5 in ((4, False), (5, True)):
        xtr, ytr = clusters(120, classes=classes, seed=0)
        xte, yte = clusters(40, classes=classes, seed=1)
        train = write_store(tmp_path / str(classes) / "train", xtr, ytr)
        test = write_store(tmp_path / str(classes) / "test", xte, yte)
        result = run_baseline("knn", train, test, replace(FAST, k=3))
        assert ("top5" in result) == has_top5
    tally = Tally(np.arange(6), np.arange(6))
    tally.update(np.array([[0.0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]]), np.array([0, 0]))
    assert tally.metrics() == {"top1": 50.0, "top5": 50.0}
    assert tally.confusion[0, 5] == 1 and tally.confusion[0, 0] == 1


# ---- honest selection ------------------------------------------------------------------------------

def test_validation_carving_is_seeded_and_uses_labelled_train_rows_only():
    labels = np.array([-1, 0, 1, 0, 1, -1, 0, 1, 0, 1] * 10)
    a, b, c = (carve_validation(labels, 0.2, s) for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.sum() == 16 and (labels[a] >= 0).all()
    assert carve_validation(labels, 0.0, 0).sum() == 0


def test_selection_never_reads_the_test_labels(tmp_path):
    xtr, ytr = clusters(200, classes=5, sep=1.5, seed=0)
    xte, yte = clusters(80, classes=5, sep=1.5, seed=1)
    train = write_store(tmp_path / "a" / "train", xtr, ytr)
    test = write_store(tmp_path / "a" / "test", xte, yte)
    scrambled = write_store(tmp_path / "a" / "scrambled", xte, np.random.default_rng(0).permutation(yte))
    data = prepare(train, test, val_fraction=0.25, seed=3)
    assert data.val_mask.shape == (200,) and not (data.val_mask & ~data.train_mask).any()
    assert not (data.val_mask & data.fit_mask).any()
    for method in ("knn", "logreg"):
        a = run_baseline(method, train, test, FAST)
        b = run_baseline(method, train, scrambled, FAST)
        assert a["selection"] == b["selection"] and a["selected"] == b["selected"]
        assert a["top1"] != b["top1"]                       # the test labels do matter for the figure
    heads = [run_head("linear", train, t, replace(FAST, epochs=4)) for t in (test, scrambled)]
    assert heads[0]["selection"] == heads[1]["selection"]


# ---- results files ----------------------------------------------------------------------

def test_results_are_never_overwritten_silently(separable, tmp_path):
    opts = replace(FAST, k=3)
    first = run_baseline("knn", *separable, opts)
    second = run_baseline("knn", *separable, opts)
    results = tmp_path / "f" / "results"
    assert Path(first["results_file"]) == results / "knn.json"
    assert Path(second["results_file"]) == results / "knn-2.json"
    assert json.loads((results / "knn.json").read_text())["results_file"] == first["results_file"]
    assert (results / "knn-2-confusion.csv").is_file() and (results / "knn-2-confusion.npy").is_file()
    confusion = np.load(results / "knn-confusion.npy")
    assert confusion.sum() == first["n_test"] and np.trace(confusion) == first["n_test"]
    third = run_baseline("knn", *separable, replace(opts, overwrite=True))
    assert Path(third["results_file"]) == results / "knn.json" and not (results / "knn-3.json").exists()
    labels = np.array([3, 7])
    out = write_results({"method": "x"}, np.eye(2, dtype=np.int64), labels, tmp_path / "w", "x")
    assert (tmp_path / "w" / "x-confusion.csv").read_text().splitlines() == ["true\\pred,3,7", "3,1,0", "7,0,1"]
    assert write_results({"method": "x"}, np.eye(2), labels, tmp_path / "w", "x")["results_file"].endswith("x-2.json")
    assert out["confusion_labels"] == [3, 7]


def test_iter_rows_shuffled_and_rebatch_cover_every_selected_row_once(separable):
    train, _ = separable
    store = prepare(train, separable[1]).train
    mask = np.arange(store.n_rows) % 3 != 0
    blocks = list(iter_rows(store, mask, 16, fields=("indices", "embeddings", "labels"),
                            rng=np.random.default_rng(0), mix=4))
    seen = np.concatenate([b["indices"] for b in blocks])
    assert sorted(seen) == list(np.flatnonzero(mask))
    assert not np.array_equal(seen, np.sort(seen))              # shuffled, not in store order
    # the in-place shuffle moves every field of a row together
    in_order = list(iter_rows(store, fields=("indices", "embeddings", "labels")))
    emb, labels = (np.concatenate([b[k] for b in in_order]) for k in ("embeddings", "labels"))
    assert np.array_equal(np.concatenate([b["indices"] for b in in_order]), np.arange(store.n_rows))
    for b in blocks:
        np.testing.assert_array_equal(b["embeddings"], emb[b["indices"]])
        np.testing.assert_array_equal(b["labels"], labels[b["indices"]])
    batches = list(rebatch(iter_rows(store, mask, 16, fields=("indices",)), 50, min_last=20))
    sizes = [len(b["indices"]) for b in batches]
    assert sum(sizes) == mask.sum() and all(s == 50 for s in sizes[:-1]) and sizes[-1] >= 20
