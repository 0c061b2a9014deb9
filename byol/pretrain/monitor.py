"""The training-time kNN monitor: the encoder embeds two labelled splits with torch, then the
the one kNN core the evaluation stage uses too (byol.base.knn: running top-k + Wu et al. 2018 vote, numpy)
classifies them, so the accuracy logged during training is computed by the same code as
`eval/`'s knn baseline.

Weighted kNN (Wu et al. 2018, Sec. 3.4): cosine similarity; the k nearest memory-bank features
vote with weight exp(sim / T). Defaults k=200, T=0.07 as in that paper and the SSL papers that
follow it (trainer.knn_k; `eval/`'s DEFAULT_K["temperature"] is the same 200). Memory:
O(queries x (dim + k) + one bank block).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.utils.data import DataLoader

from byol.base.knn import DEFAULT_K, prepare_rows, running_topk, vote
from byol.data.augment import eval_transform

BANK_BLOCK = 4096           # memory-bank rows per similarity block
TEMPERATURE = 0.07


def weighted_knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor,
                        test_features: torch.Tensor, n_classes: int, k: int = DEFAULT_K["temperature"],
                        temperature: float = TEMPERATURE) -> torch.Tensor:
    """train [Ntr, D], labels [Ntr] (int64, >= 0), test [Nte, D] -> class votes [Nte, n_classes] (float64)."""
    bank = prepare_rows(train_features.float().cpu().numpy(), "cosine")
    labels = train_labels.cpu().numpy().astype(np.int64)
    queries = prepare_rows(test_features.float().cpu().numpy(), "cosine")
    k = max(1, min(int(k), len(bank)))
    blocks = ((bank[a:a + BANK_BLOCK], labels[a:a + BANK_BLOCK]) for a in range(0, len(bank), BANK_BLOCK))
    scores, neighbours = running_topk(blocks, queries, k, "cosine")
    return torch.from_numpy(vote(scores, neighbours, k, n_classes, "temperature", temperature, "cosine"))


@torch.no_grad()
def embed_dataset(encoder: torch.nn.Module, dataset, image_size: int, device: torch.device,
                  batch_size: int = 256, num_workers: int = 0,
                  autocast: contextlib.AbstractContextManager | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features of a whole (small) labelled dataset: ([N, D] float32 on the CPU, [N] int64)."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for images, y in loader:
        x = eval_transform(images.to(device), image_size)
        with autocast if autocast is not None else contextlib.nullcontext():
            feats.append(encoder(x).float().cpu())
        labels.append(torch.as_tensor(y))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def knn_top1(encoder, train_set, test_set, image_size, device, k=DEFAULT_K["temperature"],
             temperature=TEMPERATURE, autocast=None) -> float:
    """Top-1 accuracy (%) of the weighted kNN classifier on encoder features."""
    train_f, train_y = embed_dataset(encoder, train_set, image_size, device, autocast=autocast)
    test_f, test_y = embed_dataset(encoder, test_set, image_size, device, autocast=autocast)
    keep = train_y >= 0
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    scores = weighted_knn_scores(train_f[keep], train_y[keep], test_f, n_classes, k, temperature)
    return float((scores.argmax(1) == test_y).double().mean() * 100)
