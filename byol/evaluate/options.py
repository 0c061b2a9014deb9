"""Settings shared by every evaluation method, and the command-line flags that set them."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from byol.config import ConfigError
from byol.evaluate.blocks import DEFAULT_BLOCK_ROWS

METHODS = ("logreg", "knn", "pca-logreg", "pca-knn")


@dataclass
class Options:
    """Defaults are the command-line defaults. None for C / k / metric / weighting: see the flags."""
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


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="training split of the feature store")
    p.add_argument("--test", required=True, help="test split of the feature store (same encoder)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the labelled training rows held out to choose hyper-parameters "
                        "(0: no selection, fixed values)")
    p.add_argument("--seed", type=int, default=0, help="seeds the validation split, shuffling, init")
    p.add_argument("--block-rows", type=int, default=DEFAULT_BLOCK_ROWS, help="rows read per block")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip checking every shard's SHA-256 before reading")
    p.add_argument("--results-dir", default=None, help="default: <train>/../results")
    p.add_argument("--overwrite", action="store_true",
                   help="replace <method>.json etc. (default: write <method>-2.json, -3, ...)")
    p.add_argument("--epochs", type=int, default=30, help="epochs (the maximum when chosen on validation)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--weight-decay", type=float, default=0.0)


def add_baseline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=(*METHODS, "all"))
    p.add_argument("--max-memory-mb", type=float, default=2048.0,
                   help="logreg/pca-logreg use in-memory lbfgs when its estimate fits, else streaming SGD (no torch)")
    p.add_argument("--C", type=_auto(float), default=None, help="inverse regularisation, or 'auto' (grid)")
    p.add_argument("--C-grid", type=_numbers(float), default=(0.01, 0.1, 1.0, 10.0))
    p.add_argument("--max-iter", type=int, default=1000, help="lbfgs iterations")
    p.add_argument("--k", type=_auto(int), default=None, help="neighbours, or 'auto' (grid on validation)")
    p.add_argument("--k-grid", type=_numbers(int), default=(1, 5, 10, 20, 50, 100, 200))
    p.add_argument("--metric", choices=("cosine", "euclidean"), default=None,
                   help="default: cosine for knn, euclidean for pca-knn")
    p.add_argument("--knn-weighting", choices=("uniform", "temperature"), default=None,
                   help="default: temperature (Wu et al. 2018) for knn, uniform for pca-knn")
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--val-max-queries", type=int, default=10000,
                   help="kNN: validation rows used as queries (each chunk costs a pass over the train rows)")
    p.add_argument("--pca-components", type=int, default=128)
    p.add_argument("--pca-solver", choices=("auto", "covariance", "incremental"), default="auto",
                   help="exact PCA from a streamed covariance (auto: dim <= 4096) or IncrementalPCA")


def add_head_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", required=True, choices=("mlp", "linear"))
    p.add_argument("--hidden", type=_numbers(int), default=(512,), help="MLP hidden sizes, e.g. 1024,512")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--out-head", default=None, help="default: <train>/../heads/<head>.safetensors")


def options_from_args(args: argparse.Namespace) -> Options:
    names = {f.name for f in fields(Options)}
    return Options(**{k: v for k, v in vars(args).items() if k in names}).check()
