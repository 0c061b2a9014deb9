"""Settings shared by every evaluation method, and the command-line flags that set them."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from byol.base.errors import ConfigError
from byol.evaluate.blocks import DEFAULT_BLOCK_ROWS

METHODS = ("logreg", "knn", "pca-logreg", "pca-knn")


@dataclass
class Options:
    """These defaults are the command-line defaults (the flags read them from here). None for
    C / k / metric / weighting: chosen per method, see the flags."""
    val_fraction: float = 0.1
    seed: int = 0
    block_rows: int = DEFAULT_BLOCK_ROWS
    verify: bool = True
    results_dir: str | None = None
    overwrite: bool = False
    max_memory_mb: float = 2048.0
    # logistic regression
    C: float | None = None
    C_grid: tuple = (0.01, 0.1, 1.0, 10.0)
    max_iter: int = 1000
    # kNN
    k: int | None = None
    k_grid: tuple = (1, 5, 10, 20, 50, 100, 200)
    metric: str | None = None
    knn_weighting: str | None = None
    temperature: float = 0.07
    val_max_queries: int | None = 10000
    # PCA
    pca_components: int = 128
    pca_solver: str = "auto"
    # heads (epochs also caps the passes of logreg's streaming SGD fallback)
    hidden: tuple = (512,)
    dropout: float = 0.1
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 256
    weight_decay: float = 0.0
    out_head: str | None = None

    def check(self) -> "Options":
        """Refuse values no method can use (ConfigError: one line, exit 2)."""
        problems = []
        if not 0 <= self.val_fraction < 1:
            problems.append(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("block_rows", "max_iter", "pca_components", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.k is not None and self.k < 1 or any(k < 1 for k in self.k_grid):
            problems.append("k values must be >= 1")
        if self.C is not None and self.C <= 0 or any(c <= 0 for c in self.C_grid):
            problems.append("C values must be > 0")
        if self.temperature <= 0 or self.lr <= 0 or self.max_memory_mb <= 0:
            problems.append("--temperature, --lr and --max-memory-mb must be > 0")
        if not 0 <= self.dropout < 1 or self.weight_decay < 0 or any(h < 1 for h in self.hidden):
            problems.append("--dropout must be in [0, 1), --weight-decay >= 0, --hidden sizes >= 1")
        if problems:
            raise ConfigError("; ".join(problems))
        return self


def _numbers(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return parse


def _auto(kind):
    def parse(text: str):
        if text == "auto":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    return parse


# The flags' defaults are the Options fields' defaults, read from the dataclass: declared once.
_DEFAULTS = {f.name: f.default for f in fields(Options)}


def _option(p: argparse.ArgumentParser, flag: str, dest: str | None = None, **kwargs) -> None:
    """Add `flag` (e.g. --C-grid) defaulting to the Options field of the same name (C_grid)."""
    dest = dest or flag.lstrip("-").replace("-", "_")
    p.add_argument(flag, dest=dest, default=_DEFAULTS[dest], **kwargs)


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="training split of the feature store")
    p.add_argument("--test", required=True, help="test split of the feature store (same encoder)")
    _option(p, "--val-fraction", type=float,
            help="share of the labelled training rows held out to choose hyper-parameters (0: no selection, fixed values)")
    _option(p, "--seed", type=int, help="seeds the validation split, shuffling, init")
    _option(p, "--block-rows", type=int, help="rows read per block")
    _option(p, "--no-verify", dest="verify", action="store_false",
            help="skip checking every shard's SHA-256 before reading")
    _option(p, "--results-dir", help="default: <train>/../results")
    _option(p, "--overwrite", action="store_true",
            help="replace <method>.json etc. (default: write <method>-2.json, -3, ...)")
    _option(p, "--epochs", type=int, help="epochs (the maximum when chosen on validation)")
    _option(p, "--lr", type=float, help="AdamW learning rate")
    _option(p, "--batch-size", type=int, help="rows per head training step")
    _option(p, "--weight-decay", type=float)


def add_baseline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=(*METHODS, "all"))
    _option(p, "--max-memory-mb", type=float,
            help="logreg/pca-logreg use in-memory lbfgs when its estimate fits, else streaming SGD (no torch)")
    _option(p, "--C", type=_auto(float), help="inverse regularisation, or 'auto' (grid)")
    _option(p, "--C-grid", type=_numbers(float))
    _option(p, "--max-iter", type=int, help="lbfgs iterations")
    _option(p, "--k", type=_auto(int), help="neighbours, or 'auto' (grid on validation)")
    _option(p, "--k-grid", type=_numbers(int))
    _option(p, "--metric", choices=("cosine", "euclidean"), help="default: cosine for knn, euclidean for pca-knn")
    _option(p, "--knn-weighting", choices=("uniform", "temperature"),
            help="default: temperature (Wu et al. 2018) for knn, uniform for pca-knn")
    _option(p, "--temperature", type=float)
    _option(p, "--val-max-queries", type=int,
            help="kNN: validation rows used as queries (each chunk costs a pass over the train rows)")
    _option(p, "--pca-components", type=int)
    _option(p, "--pca-solver", choices=("auto", "covariance", "incremental"),
            help="exact PCA from a streamed covariance (auto: dim <= 4096) or IncrementalPCA")


def add_head_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", required=True, choices=("mlp", "linear"))
    _option(p, "--hidden", type=_numbers(int), help="MLP hidden sizes, e.g. 1024,512")
    _option(p, "--dropout", type=float)
    _option(p, "--out-head", help="default: <train>/../heads/<head>.safetensors")


def options_from_args(args: argparse.Namespace) -> Options:
    names = {f.name for f in fields(Options)}
    return Options(**{k: v for k, v in vars(args).items() if k in names}).check()
