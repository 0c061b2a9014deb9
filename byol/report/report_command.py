"""RUN_DIR/report.md and its plots, from what is on disk alone.

    python -m byol.report runs/demo

Reads RUN_DIR/config.yaml, metrics.jsonl, pipeline.json (stage times, provenance, result files,
stores), the result JSON files and the feature stores; writes report.md, which opens with the
verdict (byol/report/verdict.py: what BYOL adds over its starting weights and over raw pixels), with PNGs
beside it: loss.png (loss and collapse indicator), knn.png (kNN accuracy over training, with the
starting weights' score, measured before the first step, as a dashed line),
embedding.png (PCA and t-SNE of test embeddings), confusion.png (the best head's confusion
matrix), neighbors.png (byol/report/gallery.py), and the TensorBoard projector under RUN_DIR/tensorboard
(byol/report/projector.py).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from byol.base.atomic import atomic_savefig, atomic_write_text
from byol.report.verdict import verdict

log = logging.getLogger("byol")

ROWS = [  # (label in the table, features, result key in pipeline.json)
    ("BYOL + linear head", "BYOL", "linear"),
    ("BYOL + MLP head", "BYOL", "mlp"),
    ("BYOL + logistic regression", "BYOL", "logreg"),
    ("BYOL + kNN", "BYOL", "knn"),
    ("starting weights + logistic regression", "start", "start-logreg"),
    ("starting weights + kNN", "start", "start-knn"),
    ("starting weights, BN statistics measured + logistic regression", "start (measured BN)", "start-bn-logreg"),
    ("starting weights, BN statistics measured + kNN", "start (measured BN)", "start-bn-knn"),
    ("raw pixels + PCA + logistic regression", "pixels", "pca-logreg"),
    ("raw pixels + PCA + kNN", "pixels", "pca-knn"),
]


def _plt():
    import matplotlib
    matplotlib.use("Agg")          # no display needed
    import matplotlib.pyplot as plt
    return plt


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_training(rows: list[dict], out: Path) -> list[str]:
    plt, made = _plt(), []
    steps = [r for r in rows if "loss" in r]
    if steps:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        ax[0].plot([r["step"] for r in steps], [r["loss"] for r in steps])
        ax[0].set(xlabel="step", ylabel="BYOL loss", title="loss")
        ax[1].plot([r["step"] for r in steps], [r["collapse_std"] for r in steps], color="C1")
        ax[1].set(xlabel="step", ylabel="std of normalised z x sqrt(d)", title="collapse indicator (0 = collapsed)",
                  ylim=(0, None))
        fig.tight_layout(), atomic_savefig(fig, out / "loss.png", dpi=110), plt.close(fig)
        made.append("loss.png")
    knn = [r for r in rows if "knn_top1" in r]
    if knn:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["epoch"] for r in knn], [r["knn_top1"] for r in knn], marker="o", label="BYOL (online encoder)")
        start = next((r["knn_top1"] for r in knn if r["step"] == 0), None)   # measured before the first step
        if start is not None:
            ax.axhline(start, color="C3", linestyle="--", label=f"starting weights ({start:.1f}%)")
        ax.set(xlabel="epoch", ylabel="top-1 (%)", title="online kNN accuracy")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout(), atomic_savefig(fig, out / "knn.png", dpi=110), plt.close(fig)
        made.append("knn.png")
    return made


def plot_embedding(test_store_dir: Path, out: Path, max_points: int = 2000, seed: int = 0) -> list[str]:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from byol.store import FeatureStore
    store = FeatureStore.open(test_store_dir)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(store))[:max_points])
    x = store.to_array()[keep]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)      # standardise: a few large dimensions would dominate PCA
    y = store.labels()[keep]
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.5))
    for a, (name, xy) in zip(ax, [("PCA", PCA(2, random_state=seed).fit_transform(x)),
                                  (f"t-SNE ({len(x)} points)",
                                   TSNE(2, init="pca", random_state=seed,
                                        perplexity=min(30, max(5, len(x) // 4))).fit_transform(x))]):
        sc = a.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", s=6)
        a.set(title=f"test embeddings: {name}", xticks=[], yticks=[])
    fig.colorbar(sc, ax=ax, label="class")
    atomic_savefig(fig, out / "embedding.png", dpi=110), plt.close(fig)
    return ["embedding.png"]


def plot_confusion(csv_path: Path, out: Path, title: str) -> list[str]:
    lines = csv_path.read_text().splitlines()
    labels = lines[0].split(",")[1:]
    matrix = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title=title)
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(j, i, int(v), ha="center", va="center", fontsize=7)
    fig.tight_layout(), atomic_savefig(fig, out / "confusion.png", dpi=110), plt.close(fig)
    return ["confusion.png"]


def inspection_views(run_dir: Path, stores: dict) -> tuple[list[str], str]:
    """neighbors.png and the TensorBoard projector, from the BYOL (and starting weights') stores, and a
    note for report.md saying what is missing and why (empty when nothing is). The images come from the
    dataset the stores were computed from: where it is gone (moved, or a relative data.root seen from
    another folder), the report says so and goes on without them."""
    if not {"byol_train", "byol_test"} <= set(stores):
        return [], ("No neighbour gallery or projector: the run directory lists no BYOL train and test stores "
                    "(pipeline.json); run `byol pipeline` to make them.")
    from byol.base.errors import DataError
    from byol.report.gallery import write_gallery
    from byol.report.projector import write_projector
    try:
        write_gallery(stores, run_dir)
    except (DataError, OSError) as e:
        log.warning("no neighbour gallery or projector: the stores' images cannot be read (%s)", e)
        return [], f"No neighbour gallery or projector: {e}"
    try:
        write_projector(run_dir / "tensorboard", {"byol": stores["byol_test"], "start": stores.get("start_test")})
    except (DataError, OSError) as e:
        log.warning("no TensorBoard projector (%s)", e)
        return ["neighbors.png"], f"No TensorBoard projector: {e}"
    return ["neighbors.png"], ""


def results_table(results: dict) -> list[str]:
    lines = ["| method | features | top-1 (%) | top-5 (%) | chosen on validation |", "|---|---|---|---|---|"]
    for label, features, key in ROWS:
        r = results.get(key)
        if r is None:
            continue
        chosen = ", ".join(f"{k}={v}" for k, v in (r.get("selected") or {}).items()) or "-"
        top5 = f"{r['top5']:.1f}" if "top5" in r else "-"
        lines.append(f"| {label} | {features} | {r['top1']:.1f} | {top5} | {chosen} |")
    return lines


def write_report(run_dir: str | Path) -> Path:
    """(Re)generate RUN_DIR/report.md from the files on disk; returns its path."""
    import yaml
    run_dir = Path(run_dir)
    info_path = run_dir / "pipeline.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    results = {k: json.loads(Path(p).read_text()) for k, p in info.get("result_files", {}).items()
               if Path(p).exists()}
    plots = plot_training(read_metrics(run_dir), run_dir)
    if info.get("features_test") and Path(info["features_test"]).exists():
        plots += plot_embedding(Path(info["features_test"]), run_dir)
    stores = {k: v for k, v in (info.get("stores") or {}).items() if (Path(v) / "manifest.json").exists()}
    views, missing = inspection_views(run_dir, stores)
    plots += views
    heads = [k for k in ("mlp", "linear") if k in results]
    best = max(heads, key=lambda k: results[k]["top1"]) if heads else None
    if best and results[best].get("confusion_csv") and Path(results[best]["confusion_csv"]).exists():
        plots += plot_confusion(Path(results[best]["confusion_csv"]), run_dir, f"confusion: BYOL + {best} head")

    md = [f"# BYOL report: `{run_dir}`", ""]
    if results:
        md += [f"**Verdict:** {verdict(results)['sentence']}", "",
               "The interval is a paired bootstrap over the test images both probes scored: it covers the test "
               "set's sampling, not the spread between runs with other seeds.", ""]
        md += ["## Results (test split; hyper-parameters chosen on a validation split of train)", ""]
        md += results_table(results) + [""]
    captions = {"loss.png": "Training loss and collapse indicator",
                "knn.png": "Online kNN accuracy during training",
                "embedding.png": "Test embeddings in 2-D, coloured by class",
                "confusion.png": "Confusion matrix of the best head",
                "neighbors.png": "Test images and their 5 nearest training images: BYOL vs its starting weights"}
    md += ["## Plots", ""] + [f"![{captions[p]}]({p})" for p in plots] + [""]
    if missing:
        md += [f"*{missing}*", ""]
    if (run_dir / "tensorboard" / "projector_config.pbtxt").exists():
        md += ["## Interactive view", "", f"`tensorboard --logdir {run_dir / 'tensorboard'}`, then the PROJECTOR "
               "tab: the test embeddings (tags `byol` and `start`, at most 2,000 rows) with labels and thumbnails, "
               "in PCA, t-SNE or UMAP.", ""]
    if info:
        md += ["## Provenance", "", "| stage | seconds |", "|---|---|"]
        md += [f"| {k} | {v:.1f} |" for k, v in info.get("stage_seconds", {}).items()]
        md += ["", "```json", json.dumps(info.get("provenance", {}), indent=2), "```", ""]
    if (run_dir / "config.yaml").exists():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        md += ["## Resolved config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]
    return atomic_write_text(run_dir / "report.md", "\n".join(md))


def main(argv=None, prog: str = "python -m byol.report"):
    from byol.command_line import parse_arguments, run_command
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a run directory written by main.py or byol.pipeline")
    args = parse_arguments(ap, argv)
    run_command(lambda: {"report": str(write_report(args.run_dir))})


if __name__ == "__main__":
    main()
