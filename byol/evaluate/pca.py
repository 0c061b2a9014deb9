"""PCA baselines (the "PCA + logistic regression / kNN" rows of the STL-10 table), streaming.

Recipe: standardise the stored features (raw pixels when the store was extracted with
`--encoder pixels`), project onto the first 128 principal components, then logistic regression
(lbfgs, C=1, max_iter=1000) or kNN (k=10). Both the scaler (StandardScaler.partial_fit) and the
PCA are fitted over row blocks of the labelled training rows, so the fit never holds the matrix:
exact PCA from a streamed covariance up to dim 4096, IncrementalPCA.partial_fit above (raw
pixels), --pca-solver to choose. The projection is applied block by block afterwards.
"""
from __future__ import annotations

import numpy as np

from byol.evaluate.blocks import (DEFAULT_BLOCK_ROWS, Standardizer, fit_standardizer, iter_rows, progress,
                                  rebatch)

PCA_BATCH_BYTES = 64 * 2**20        # IncrementalPCA works in float64 on (batch + components) x dim
COV_MAX_DIM = 4096                  # covariance solver: a dim x dim float64 matrix (128 MB at 4096;
                                    # CIFAR's 32x32x3 pixels: 75 MB, exact; PCA + classifier ran 5-9x
                                    # faster than with IncrementalPCA)


class Projector:
    """x -> PCA(standardise(x)) as float32 [n, n_components]."""

    def __init__(self, scaler: Standardizer, mean: np.ndarray, components: np.ndarray):
        self.scaler = scaler
        self.mean = np.asarray(mean, np.float32)
        self.components_t = np.ascontiguousarray(np.asarray(components, np.float32).T)

    @property
    def out_dim(self) -> int:
        return self.components_t.shape[1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (self.scaler(x) - self.mean) @ self.components_t


def pca_batch_rows(dim: int, n_components: int, block_rows: int = DEFAULT_BLOCK_ROWS) -> int:
    """Rows per IncrementalPCA batch: >= n_components, float64 batch within PCA_BATCH_BYTES when possible."""
    return max(n_components, min(block_rows, PCA_BATCH_BYTES // (8 * dim)))


def fit_projector(store, mask: np.ndarray, n_components: int, block_rows: int = DEFAULT_BLOCK_ROWS,
                  scaler: Standardizer | None = None, solver: str = "auto") -> tuple[Projector, dict]:
    """Streaming scaler pass, then a streaming PCA of the standardised selected rows.

    solver: "covariance" accumulates the mean and X^T X (float64, dim x dim) over blocks and takes the
    top eigenvectors: exact PCA (as sklearn's PCA, signs alike) in one cheap pass, for dim <= COV_MAX_DIM.
    "incremental": sklearn IncrementalPCA.partial_fit over batches (memory O(batch x dim), for wide
    inputs such as raw pixels; an SVD per batch makes it slower). "auto" picks by dim.
    n_components is capped at min(dim, selected rows). Returns the projector and facts for the JSON.
    """
    if solver == "auto":
        solver = "covariance" if store.dim <= COV_MAX_DIM else "incremental"
    if solver not in ("covariance", "incremental"):
        raise ValueError(f"PCA solver must be auto, covariance or incremental, got {solver!r}")
    n_rows = int(mask.sum())
    n_components = int(min(n_components, store.dim, n_rows))
    scaler = scaler or fit_standardizer(store, mask, block_rows, desc="pca scaler")
    fit = _covariance if solver == "covariance" else _incremental
    mean, components, ratio = fit(store, mask, scaler, n_components, block_rows)
    info = {"pca_components": n_components, "pca_solver": solver, "pca_explained_variance": float(ratio)}
    return Projector(scaler, mean, components), info


def _incremental(store, mask, scaler, n_components, block_rows):
    from sklearn.decomposition import IncrementalPCA

    pca = IncrementalPCA(n_components=n_components)
    rows = pca_batch_rows(store.dim, n_components, block_rows)
    with progress(store.n_rows, "pca fit (incremental)") as bar:
        for batch in rebatch(iter_rows(store, mask, block_rows, fields=("embeddings",), bar=bar), rows,
                             min_last=n_components):
            pca.partial_fit(scaler(batch["embeddings"]))
    return pca.mean_, pca.components_, np.sum(pca.explained_variance_ratio_)


def _covariance(store, mask, scaler, n_components, block_rows):
    total = np.zeros(store.dim)
    gram = np.zeros((store.dim, store.dim))
    n = 0
    with progress(store.n_rows, "pca fit (covariance)") as bar:
        for block in iter_rows(store, mask, block_rows, fields=("embeddings",), bar=bar):
            z = scaler(block["embeddings"]).astype(np.float64)
            total += z.sum(axis=0)
            gram += z.T @ z
            n += len(z)
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / max(n - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:n_components]
    components = vectors[:, order].T
    # sklearn's sign convention (svd_flip, u_based_decision=False): largest |entry| of each component > 0
    signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1, signs)[:, None]
    return mean, components, values[order].sum() / max(values.clip(min=0).sum(), 1e-300)
