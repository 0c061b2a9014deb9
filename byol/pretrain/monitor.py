"""Weighted k-nearest-neighbour classification (Wu et al. 2018, Sec. 3.4), as used to monitor
self-supervised training: cosine similarity, the k nearest training features vote with weight
exp(sim / T) (the vote is byol.evaluate.neighbors.weighted_vote, shared with the streaming kNN
baseline). Test features are processed in blocks, so memory is O(block x n_train).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from byol.data.augment import eval_transform
from byol.evaluate.neighbors import weighted_vote


@torch.no_grad()
def weighted_knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor,
                        test_features: torch.Tensor, n_classes: int, k: int = 200,
                        temperature: float = 0.07, block: int = 1024) -> torch.Tensor:
    """train [Ntr, D], labels [Ntr] (int64), test [Nte, D] -> class scores [Nte, n_classes]."""
    train_features = F.normalize(train_features.float(), dim=1)
    k = min(k, train_features.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], block):
        query = F.normalize(test_features[start:start + block].float(), dim=1)
        sim, idx = (query @ train_features.T).topk(k, dim=1)            # [B, k]
        scores.append(weighted_vote(sim, train_labels[idx], n_classes, temperature))
    return torch.cat(scores) if scores else torch.zeros(0, n_classes)


@torch.no_grad()
def embed_dataset(encoder: torch.nn.Module, dataset, image_size: int, device: torch.device,
                  batch_size: int = 256, num_workers: int = 0,
                  autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features of a whole (small) labelled dataset: ([N, D] float32, [N] int64)."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for images, y in loader:
        x = eval_transform(images.to(device), image_size)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            feats.append(encoder(x).float().cpu())
        labels.append(torch.as_tensor(y))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def knn_top1(encoder, train_set, test_set, image_size, device, k=20, temperature=0.07,
             autocast_dtype=None) -> float:
    """Top-1 accuracy (%) of the weighted kNN classifier on encoder features."""
    train_f, train_y = embed_dataset(encoder, train_set, image_size, device, autocast_dtype=autocast_dtype)
    test_f, test_y = embed_dataset(encoder, test_set, image_size, device, autocast_dtype=autocast_dtype)
    keep = train_y >= 0
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    scores = weighted_knn_scores(train_f[keep], train_y[keep], test_f, n_classes, k, temperature)
    return float((scores.argmax(1) == test_y).float().mean() * 100)
