"""A contact sheet: rows of thumbnails with a caption under each, for search results and duplicate groups.

Search: each row is a query (black border) followed by its nearest store rows, best first, each
with its cosine similarity to the query underneath. Duplicates: each row is a group, its first
member (black) followed by the others with their similarity to it. One matplotlib figure (Agg, no
display), written atomically like every figure of the project.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from byol.base.atomic import atomic_savefig

FIRST, OTHER = "#000000", "#1f77b4"
TILE_INCHES = 0.9


def draw_sheet(rows: list[tuple[np.ndarray, list[str]]], path: Path, title: str) -> Path:
    """rows: [(uint8 images [m, 3, S, S], a caption per image), ...], row i's first image framed black.
    Writes PNG `path` (an empty sheet with the title alone when `rows` is empty)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n_rows = max(1, len(rows))
    n_cols = max([len(images) for images, _ in rows] + [1])
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(n_cols * TILE_INCHES, n_rows * (TILE_INCHES + 0.15) + 0.4),
                             gridspec_kw={"wspace": 0.06, "hspace": 0.35})
    for ax in axes.flat:
        ax.axis("off")
    for r, (images, captions) in enumerate(rows):
        for c, (image, caption) in enumerate(zip(images, captions)):
            ax = axes[r, c]
            ax.axis("on")
            ax.set_xticks([]), ax.set_yticks([])
            ax.imshow(np.transpose(image, (1, 2, 0)), interpolation="nearest")
            for spine in ax.spines.values():
                spine.set_edgecolor(FIRST if c == 0 else OTHER)
                spine.set_linewidth(2.5 if c == 0 else 1)
            ax.set_xlabel(caption, fontsize=6, labelpad=2)
    fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.03, top=1 - 0.4 / (n_rows * (TILE_INCHES + 0.15) + 0.4))
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


def short(text: str, width: int = 18) -> str:
    """A caption-sized name: a path's last folder and file ('airplane/0042.jpg'), cut to `width`."""
    parts = text.replace("\\", "/").split("/")
    text = "/".join(parts[-2:])
    return text if len(text) <= width else "..." + text[-(width - 3):]
