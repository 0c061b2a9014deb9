"""One evaluation end to end: open the stores, fit (choosing hyper-parameters on validation), score
the test rows, write the results files, return the result dict that the command prints.

Result JSON (also written to `<train>/../results/<method>.json`, never overwriting, see
byol.evaluate.results): method, top1, top5 (with >= 5 classes; both in %), n_train, n_val, n_test,
n_classes, seconds, streams, the chosen hyper-parameters (`selected`) and how they were chosen
(`selection`: "validation" with the grid and validation scores, "flag", or a default), the solver,
the stores and the encoder provenance, and the files written.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from byol.base.errors import ConfigError
from byol.evaluate.blocks import fit_standardizer
from byol.evaluate.options import METHODS, Options
from byol.evaluate.results import Tally, default_dir, free_stem, write_results
from byol.evaluate.splits import EvalData, prepare
from byol.store import FEATURE_ATTRS

log = logging.getLogger(__name__)


def _finish(method: str, data: EvalData, scores, info: dict, started: float,
            extra: dict | None = None) -> tuple[dict, Tally]:
    """Tally the test scores and assemble the result dict (not yet written)."""
    tally = Tally(data.classes, data.test_labels[data.test_mask])
    for block_scores, labels in scores:
        tally.update(block_scores, labels)
    counts = data.counts()
    result = {"method": method, **tally.metrics(), "n_train": counts["n_train"], "n_test": counts["n_test"],
              "seconds": round(time.perf_counter() - started, 3), "streams": info.pop("streams"),
              "n_val": counts["n_val"], "n_classes": counts["n_classes"], "dim": data.train.dim, **info,
              "val_fraction": data.val_fraction, "seed": data.seed,
              "train": str(data.train.split_dir), "test": str(data.test.split_dir),
              "store_attrs": {k: data.train.attrs[k] for k in FEATURE_ATTRS if k in data.train.attrs},
              **(extra or {})}
    n_unlabelled = int((data.test_labels < 0).sum())
    if n_unlabelled:
        result["n_test_unlabelled_skipped"] = n_unlabelled
    return result, tally


def _write(result: dict, tally: Tally, data: EvalData, opts: Options) -> dict:
    directory = Path(opts.results_dir) if opts.results_dir else default_dir(data.train.split_dir, "results")
    predictions = tally.predictions(data.test.indices()[data.test_mask])   # scored in store order
    out = write_results(result, tally.confusion, tally.labels, directory, result["method"], opts.overwrite,
                        predictions)
    log.info("%s: top-1 %.2f%% -> %s", result["method"], result["top1"], out["results_file"])
    return out


class _Transforms:
    """Scaler and PCA projection fitted once per evaluation, shared by the methods that use them."""

    def __init__(self, data: EvalData, opts: Options):
        self.data, self.opts = data, opts
        self._scaler = self._projector = None

    def scaler(self):
        if self._scaler is None:
            self._scaler = fit_standardizer(self.data.train, self.data.train_mask, self.opts.block_rows)
        return self._scaler

    def projector(self):
        if self._projector is None:
            from byol.evaluate.pca import fit_projector
            self._projector = fit_projector(self.data.train, self.data.train_mask, self.opts.pca_components,
                                            self.opts.block_rows, self.scaler(), self.opts.pca_solver)
        return self._projector


def _baseline(method: str, data: EvalData, opts: Options, transforms: _Transforms) -> dict:
    started = time.perf_counter()
    extra = {}
    if method in ("logreg", "pca-logreg"):
        from byol.evaluate.logreg import evaluate_logreg
        transform = transforms.scaler()
        if method == "pca-logreg":
            transform, extra = transforms.projector()
        scores, info = evaluate_logreg(data, opts, transform, method)
    elif method in ("knn", "pca-knn"):
        from byol.evaluate.neighbors import evaluate_knn
        transform = None
        if method == "pca-knn":
            transform, extra = transforms.projector()
        scores, info = evaluate_knn(data, opts, transform, method)
    else:
        raise ValueError(f"unknown method {method!r}: choose from {METHODS}")
    result, tally = _finish(method, data, scores, info, started, extra)
    return _write(result, tally, data, opts)


def run_baseline(method: str, train: str | Path, test: str | Path, opts: Options | None = None) -> dict:
    """`method` in logreg | knn | pca-logreg | pca-knn | all. For "all": one result file per method,
    and the returned dict holds {"method": "all", "top1": {method: %}, ..., "results": {method: result}}."""
    opts = (opts or Options()).check()
    started = time.perf_counter()
    data = prepare(train, test, opts.val_fraction, opts.seed, opts.verify)
    transforms = _Transforms(data, opts)
    if method != "all":
        return _baseline(method, data, opts, transforms)
    results = {}
    for name in METHODS:
        results[name] = _baseline(name, data, opts, transforms)
        print(json.dumps(results[name]), flush=True)      # each method's line as it finishes
    summary = {"method": "all", "methods": list(METHODS),
               "top1": {m: r["top1"] for m, r in results.items()}, "n_train": data.counts()["n_train"],
               "n_test": data.counts()["n_test"], "seconds": round(time.perf_counter() - started, 3),
               "streams": {m: r["streams"] for m, r in results.items()}, "results": results}
    if all("top5" in r for r in results.values()):
        summary["top5"] = {m: r["top5"] for m, r in results.items()}
    return summary


def run_head(kind: str, train: str | Path, test: str | Path, opts: Options | None = None) -> dict:
    """Train an MLP or linear head over blocks (epochs chosen on validation), test it, save it.

    The head goes to --out-head, default `<train>/../heads/<kind>.safetensors` (`<kind>-2.safetensors`,
    ... when taken, unless --overwrite); load it with byol.evaluate.head_file.load_head.
    """
    from byol.evaluate.head_file import SUFFIX, head_record, save_head
    from byol.evaluate.passes import score_blocks
    from byol.evaluate.training import fit_selected

    opts = (opts or Options()).check()
    started = time.perf_counter()
    data = prepare(train, test, opts.val_fraction, opts.seed, opts.verify)
    if opts.out_head:
        head_path = Path(opts.out_head)
        if head_path.exists() and not opts.overwrite:
            raise ConfigError(f"{head_path}: exists; choose another --out-head or pass --overwrite")
    else:
        heads_dir = default_dir(data.train.split_dir, "heads")
        head_path = heads_dir / f"{free_stem(heads_dir, kind, (SUFFIX,), opts.overwrite)}{SUFFIX}"
    scaler = fit_standardizer(data.train, data.train_mask, opts.block_rows)
    model, info = fit_selected(data, opts, kind, mean=scaler.mean, std=scaler.scale)
    scores = score_blocks(model.probabilities, data.test, data.test_mask, opts.block_rows, desc="test")
    result, tally = _finish(kind, data, scores, info, started)
    result["head_file"] = str(head_path)
    result = _write(result, tally, data, opts)
    save_head(head_path, head_record(model, kind, data.train.attrs, result))
    return result
