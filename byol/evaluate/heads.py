"""Classification heads on stored embeddings, in numpy: the network, its gradients, its outputs.

A head standardises its input with the training split's mean/std (held in the head), then applies
`hidden` Linear+ReLU(+Dropout) layers and a final Linear classifier. `kind="linear"` (no hidden
layers) is multinomial logistic regression (softmax).

Why numpy and not torch: evaluation reads shards on any machine, and `import torch` alone costs
500-670 MB of resident memory with the pinned CUDA wheel, more than the whole evaluation budget
(25% of a 1,000,000 x 512 float32 store is 488 MB). A head is two or three matrix products per
minibatch; numpy's BLAS does them at the same speed (benchmarks/head_throughput.py), and the
heads' memory is the shuffle buffer plus the weights. Weights use torch's nn.Linear layout and
initialisation (weight [out, in], U(-1/sqrt(in), 1/sqrt(in))) and names (`body.{3i}.weight`,
`classifier.weight`), so a head file loads into the equivalent torch module
(tests/test_heads.py checks forward, gradients and AdamW steps against torch).

Use: `head_outputs(head, embeddings)` gives the hidden activations, class probabilities and
predicted class of a batch; files: byol.evaluate.head_file.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

KINDS = ("mlp", "linear")


class Head:
    """standardise -> [Linear, ReLU, Dropout] x len(hidden) -> Linear; `logits(x)` for a batch."""

    def __init__(self, in_dim: int, hidden: list[int], n_classes: int, dropout: float = 0.0, classes=None,
                 mean=None, std=None, rng: np.random.Generator | None = None):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_dim, self.hidden, self.dropout, self.n_classes = int(in_dim), [int(h) for h in hidden], \
            float(dropout), int(n_classes)
        self.mean = np.zeros(in_dim, np.float32) if mean is None else np.asarray(mean, np.float32).copy()
        self.std = np.ones(in_dim, np.float32) if std is None else np.asarray(std, np.float32).copy()
        self.classes = np.asarray(range(n_classes) if classes is None else classes, np.int64)
        widths = [self.in_dim, *self.hidden, self.n_classes]
        # nn.Linear's default init (kaiming_uniform with a=sqrt(5) gives bound 1/sqrt(fan_in); bias the same).
        self.weights, self.biases = [], []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            bound = 1.0 / np.sqrt(fan_in)
            self.weights.append(rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32))
            self.biases.append(rng.uniform(-bound, bound, fan_out).astype(np.float32))

    # ---- parameters --------------------------------------------------------------------------
    @property
    def hidden_width(self) -> int:
        """Width of the classifier's input: the last hidden size (in_dim for a linear head)."""
        return self.weights[-1].shape[1]

    def parameters(self) -> list[np.ndarray]:
        """[w0, b0, w1, b1, ...], the arrays the optimiser updates in place."""
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    def state_dict(self) -> dict[str, np.ndarray]:
        """torch's key names for the same network: body.{3i}.* (Linear, ReLU, Dropout per hidden layer)."""
        names = [f"body.{3 * i}" for i in range(len(self.hidden))] + ["classifier"]
        state = {}
        for name, w, b in zip(names, self.weights, self.biases):
            state[f"{name}.weight"], state[f"{name}.bias"] = w, b
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy weights in; ValueError naming the key when a name or shape differs."""
        own = self.state_dict()
        if set(state) != set(own):
            raise ValueError(f"expected keys {sorted(own)}, got {sorted(state)}")
        for key, target in own.items():
            value = np.asarray(state[key], np.float32)
            if value.shape != target.shape:
                raise ValueError(f"{key}: expected shape {list(target.shape)}, got {list(value.shape)}")
            target[...] = value

    # ---- forward / backward ------------------------------------------------------------------
    def standardise(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) - self.mean) / self.std

    def classify(self, h: np.ndarray) -> np.ndarray:
        """[n, hidden_width] -> logits [n, n_classes]: the final Linear."""
        return h @ self.weights[-1].T + self.biases[-1]

    def features(self, x: np.ndarray) -> np.ndarray:
        """[n, in_dim] -> [n, hidden_width]: last hidden activations (standardised input if linear)."""
        h = self.standardise(x)
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ w.T + b, 0)
        return h

    def logits(self, x: np.ndarray) -> np.ndarray:
        """[n, in_dim] -> [n, n_classes], eval mode (no dropout)."""
        return self.classify(self.features(x))

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """[n, in_dim] -> class probabilities [n, n_classes] (columns: self.classes), eval mode."""
        return softmax(self.logits(x))

    def forward_train(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list]:
        """Logits [n, n_classes] with dropout on, and what backward needs (each layer's input and mask)."""
        h = self.standardise(x)
        inputs, masks = [h], []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ w.T + b, 0)
            if self.dropout > 0:
                # Inverted dropout (Srivastava et al. 2014): scale kept units by 1/(1-p) while training.
                mask = (rng.random(h.shape, dtype=np.float32) >= self.dropout).astype(np.float32)
                mask /= 1.0 - self.dropout
                h *= mask
                masks.append(mask)
            else:
                masks.append(None)
            inputs.append(h)
        return self.classify(h), [inputs, masks]

    def backward(self, cache: list, grad_logits: np.ndarray) -> list[np.ndarray]:
        """Gradients of the loss w.r.t. parameters(), in that order, from dloss/dlogits [n, n_classes]."""
        inputs, masks = cache
        grads, g = [], grad_logits.astype(np.float32, copy=False)
        for layer in range(len(self.weights) - 1, -1, -1):
            a = inputs[layer]                                    # this layer's input [n, fan_in]
            grads += [g.sum(axis=0), g.T @ a]                    # bias, weight (reversed below)
            if layer == 0:
                break
            g = g @ self.weights[layer]                          # d/d(a): through dropout and ReLU:
            if masks[layer - 1] is not None:
                g *= masks[layer - 1]
            g *= a > 0                                           # a > 0 iff the unit was active and kept
        return grads[::-1]


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of logits [n, C] against class indices [n], and its gradient [n, C]."""
    n = len(labels)
    shifted = logits - logits.max(axis=1, keepdims=True)       # log-sum-exp without overflow
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    loss = float(np.log(total[:, 0]).mean() - shifted[np.arange(n), labels].mean())
    grad = exp / total
    grad[np.arange(n), labels] -= 1.0
    grad /= n
    return loss, grad


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def build_head(kind: str, in_dim: int, n_classes: int, hidden=(512,), dropout: float = 0.0, seed: int = 0,
               **kwargs) -> Head:
    """A fresh head; `seed` fixes its initial weights (and nothing else)."""
    if kind not in KINDS:
        raise ValueError(f"head kind must be one of {KINDS}, got {kind!r}")
    return Head(in_dim, list(hidden) if kind == "mlp" else [], n_classes, dropout if kind == "mlp" else 0.0,
                rng=np.random.default_rng([seed, 0x4EAD]), **kwargs)


class HeadOutputs(NamedTuple):
    hidden: np.ndarray   # [n, h] last hidden layer (standardised input for linear heads)
    probs: np.ndarray    # [n, n_classes] softmax probabilities, columns = head.classes
    pred: np.ndarray     # [n] predicted class, as an original label


def head_outputs(head: Head, embeddings, batch_size: int = 65536) -> HeadOutputs:
    """Hidden activations, class probabilities and predicted class (original label) of a batch.

    embeddings [n, in_dim]: a numpy array (or anything np.asarray takes, e.g. a CPU tensor).
    Dropout is off.
    """
    x = np.asarray(embeddings, np.float32)
    hidden = np.empty((len(x), head.hidden_width), np.float32)
    probs = np.empty((len(x), head.n_classes), np.float32)
    for start in range(0, len(x), batch_size):
        h = head.features(x[start:start + batch_size])
        hidden[start:start + len(h)] = h
        probs[start:start + len(h)] = softmax(head.classify(h))
    return HeadOutputs(hidden, probs, head.classes[probs.argmax(axis=1)])
