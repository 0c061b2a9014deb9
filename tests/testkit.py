"""What several test files share: the tiny pretraining settings, the encoder-file, STL-10-file and
feature-store writers, and the two ways of running a command.

Test files import from here (pytest puts tests/ on sys.path before it imports conftest.py and the
test files, so no sys.path edit is needed); the fixtures built on these helpers (the shared tiny
trained run, the evaluation stores) live in conftest.py. Test files never import one another.
The benchmarks that need STL-10 files import `write_stl10_binary` as `tests.testkit` (they put the
repository root on sys.path).
"""
from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byol.evaluate.options import Options
from byol.store.writer import ShardWriter, write_manifest

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- tiny pretraining

# 96 digits at 32 px, batch 16 (6 steps an epoch), small heads, fp32 on one CPU process, and a tiny
# network (MobileNetV3-small at width 0.25: 0.4 M parameters, 144-d features, batch norm like the real
# ones): about a second a run and 5 MB of files, where ResNet-18 takes 5x the time and 400 MB. Tests
# whose subject is the architecture (the plain torchvision encoder.pt, 512-d stores, ResNet import and
# export, the small stem) add RESNET18 instead.
TINY_DATA = ["data.name=digits", "data.split=train", "data.max_images=96",
             "data_transforms.input_shape=(32,32,3)", "network.small_stem=false",
             "network.projection_head.mlp_hidden_size=32", "network.projection_head.projection_size=16",
             "trainer.batch_size=16", "trainer.num_workers=0", "trainer.progress=false",
             "trainer.log_every=1", "trainer.tensorboard=false", "trainer.precision=fp32"]
TINY_NETWORK = ["network.name=mobilenet_v3_small", "network.kwargs={width_mult: 0.25}"]
TINY = TINY_DATA + TINY_NETWORK
TINY_RESNET = TINY_DATA + ["network.name=resnet18"]


def write_encoder(path: str | Path, encoder, overrides: list[str], step: int = 1) -> Path:
    """Write `encoder` (a `build_encoder` module) as training exports it, for the config `overrides` give.

    The files come from the library's own writer (`byol.pretrain.checkpoint.write_encoder_files`), so they
    follow the encoder format whatever it is; the encoder is loaded strictly into the network that
    config builds, so a config that does not describe it (another stem, another network) fails here.
    """
    from byol.config import load_config
    from byol.pretrain.checkpoint import write_encoder_files
    from byol.pretrain.setup import build_networks
    cfg = load_config(None, list(overrides))
    online, _ = build_networks(cfg)
    online.encoder.load_state_dict(encoder.state_dict())
    return write_encoder_files(cfg, online, step, Path(path))


# --------------------------------------------------------------------------- STL-10 files

def write_stl10_binary(root, n_train: int = 20, n_test: int = 10, n_unlabeled: int = 30,
                       seed: int = 0) -> Path:
    """Write a tiny random STL-10 in the exact official layout under ROOT/stl10_binary/; return that
    folder. Images go to disk column-major, as the real files are, so readers are really tested."""
    from byol.data.stl10 import CLASSES, FOLDER, SIDE     # torch: only the callers that need these files
    rng = np.random.default_rng(seed)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        with open(folder / f"{part}_X.bin", "wb") as f:    # 4,096 images at a time: 200k fit in memory too
            for start in range(0, n, 4096):
                images = rng.integers(0, 256, (min(4096, n - start), 3, SIDE, SIDE), dtype=np.uint8)   # CHW
                f.write(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        if part != "unlabeled":
            rng.integers(1, 11, n, dtype=np.uint8).tofile(folder / f"{part}_y.bin")
    fold_size = max(1, n_train // 5)
    folds = [" ".join(map(str, rng.choice(n_train, fold_size, replace=False))) for _ in range(10)]
    (folder / "fold_indices.txt").write_text("\n".join(folds) + "\n")
    (folder / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    return folder


# --------------------------------------------------------------------------- feature stores

ATTRS = {"encoder": "resnet18", "checkpoint_sha256": "ab" * 32, "image_size": 96}
SETTINGS = {"layer": "pool", "image_size": 96}
# Evaluation options small enough for stores of a few hundred 8-d rows.
FAST = Options(block_rows=16, epochs=15, lr=1e-2, hidden=(32,), dropout=0.0, batch_size=32)


def write_store(split_dir, embeddings, labels, shard_rows: int | list[int] = 37, *, indices=None, paths=None,
                dtype: str = "float32", attrs: dict = ATTRS, settings: dict = SETTINGS, chunk_rows: int = 16,
                append_rows: int | None = None) -> Path:
    """A feature store of the given rows: embeddings [N, D], labels [N], indices [N] (default 0..N-1),
    paths (N strings, or None for a store without paths).

    shard_rows: rows per shard (several shards exercise the boundaries; no rows give one empty shard),
    or every shard's size in order (0 allowed). append_rows: rows per ShardWriter.append (default:
    one append a shard). Returns the split directory.
    """
    x = np.asarray(embeddings, np.float32)
    y = np.asarray(labels)
    n, dim = x.shape
    indices = np.arange(n) if indices is None else np.asarray(indices)
    if isinstance(shard_rows, int):
        sizes = [min(shard_rows, n - start) for start in range(0, max(n, 1), shard_rows)]
    else:
        sizes = list(shard_rows)
    assert sum(sizes) == n, (sizes, n)
    entries, start = [], 0
    for i, rows in enumerate(sizes):
        step = append_rows or max(rows, 1)
        with ShardWriter(split_dir, i, dim, dtype, paths is not None, attrs, chunk_rows=chunk_rows,
                         settings=settings) as w:
            for a in range(start, start + rows, step):
                b = min(a + step, start + rows)
                w.append(x[a:b], y[a:b], indices[a:b], None if paths is None else paths[a:b])
        entries.append(w.entry)
        start += rows
    write_manifest(split_dir, entries, dim, dtype, settings, attrs)
    return Path(split_dir)


def clusters(n, classes=4, dim=8, sep=6.0, noise=1.0, seed=0):
    """Gaussian blobs around fixed centres (same centres for every seed: train and test match)."""
    centres = np.random.default_rng(1234).standard_normal((classes, dim)) * sep
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    return (centres[y] + noise * rng.standard_normal((n, dim))).astype(np.float32), y


# --------------------------------------------------------------------------- commands

@dataclass(frozen=True)
class Ran:
    """A finished command: exit code, what it printed, and its last stdout line read as JSON."""
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_json(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port free on this machine now, for a torchrun rendezvous (--master-port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args, cwd: str | Path = REPO, env: dict | None = None, timeout: float = 300) -> Ran:
    """`python ARGS...` in a subprocess, as a user runs it: the interpreter running the tests (the
    venv's, where byol is installed), from the repository root, the environment plus `env`.

    args: a script path ("main.py", "eval/baselines.py", absolute paths) or "-m module" / "-c code",
    then its arguments (anything str() turns into an argument: paths, numbers).
    """
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    return Ran(done.returncode, done.stdout, done.stderr)


def run_main(entry, argv, capsys) -> tuple[int, str, str]:
    """A command in-process (a subprocess costs seconds of imports): `entry` is its main(argv) or a
    script path run as __main__. Returns (exit code, stdout, stderr) as the shell would see them."""
    argv = [str(a) for a in argv]
    code = 0
    try:
        if callable(entry):
            entry(argv)
        else:
            old, sys.argv = sys.argv, [str(entry), *argv]
            try:
                runpy.run_path(str(entry), run_name="__main__")
            finally:
                sys.argv = old
    except SystemExit as e:
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
