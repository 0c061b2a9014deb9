"""Fixtures shared by several test files (their helpers and constants: tests/testkit.py), and how the
suite spreads over the cores.

`python -m pytest` runs on pytest-xdist workers (pyproject.toml: `-n auto --dist worksteal`): one a
core, at most 4, each with its share of the cores as torch threads. Measured on 2 cores: 2 workers of
1 thread took 7 min 49 s where one process of 2 threads took 12 min 0 s; 2 workers of 2 threads each
took 13 min 44 s (their OpenMP threads wait on one another). `python -m pytest -n 0` runs in one process.
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:     # an xdist worker, before anything imports torch
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0))
                                                        // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest                                        # noqa: E402
from filelock import FileLock                        # noqa: E402  (torch's own dependency)

from byol.pipeline import run_pipeline               # noqa: E402
from testkit import TINY_RESNET, clusters, write_store   # noqa: E402

MAX_WORKERS = 4     # each holds torch and its tests' runs: 2 workers took at most 4.1 GB more than the idle machine


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core this process may use, at most MAX_WORKERS."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


@pytest.hookimpl(trylast=True)      # after `-m` has deselected
def pytest_collection_modifyitems(config, items):
    """Tests marked `long` (tens of seconds each) start first, spread over the workers.

    xdist's worksteal hands worker i the i-th of N equal runs of the collected list and lets an idle
    worker steal the back half of another's queue. A long test left at the back runs alone at the end
    while the other core idles (measured: the wheel's 38 s pipeline ended the suite, one core idle).
    So each run begins with its share of the long tests (dealt round-robin), filled up with the others
    in their collected order; a long module's other tests follow it (a module fixture is built once)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    long_modules = list(dict.fromkeys(item.module.__name__ for item in items if item.get_closest_marker("long")))
    fronts = [[] for _ in range(workers)]
    for i, name in enumerate(long_modules):
        module_items = [item for item in items if item.module.__name__ == name]
        fronts[i % workers] += sorted(module_items, key=lambda item: not item.get_closest_marker("long"))
    rest = [item for item in items if item.module.__name__ not in long_modules]
    ordered = []
    for i, front in enumerate(fronts):
        size = (i + 1) * len(items) // workers - i * len(items) // workers      # worksteal's run i
        ordered += front + [rest.pop(0) for _ in range(min(len(rest), max(0, size - len(front))))]
    items[:] = ordered + rest


def built_once(tmp_path_factory, name: str, build) -> Path:
    """FOLDER/name, built by `build(folder)` once per session however many xdist workers ask for it: the
    first builds it under a file lock, the others wait and read it. Returns the folder."""
    base = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        base = base.parent                           # the session's folder, above every worker's own
    folder, done = base / f"shared-{name}", base / f"shared-{name}.done"
    with FileLock(str(base / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)    # a build that failed half-way
            folder.mkdir()
            build(folder)
            done.touch()
    return folder

REPO = Path(__file__).resolve().parents[1]
PIPELINE_TINY = ["data.max_images=360", "data_transforms.input_shape=(16,16,3)", "network.small_stem=false",
                 "network.projection_head.mlp_hidden_size=32", "network.projection_head.projection_size=16",
                 "trainer.batch_size=64", "trainer.max_steps=2", "trainer.knn_every=1", "trainer.progress=false",
                 "trainer.tensorboard=false"]


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """One tiny run of the whole pipeline on the embedded digits: (run dir, its summary)."""
    def build(folder: Path) -> None:
        summary = run_pipeline(str(REPO / "configs" / "demo.yaml"),
                               PIPELINE_TINY + [f"trainer.run_dir={folder / 'run'}"], head_epochs=2)
        (folder / "summary.json").write_text(json.dumps(summary))
    folder = built_once(tmp_path_factory, "pipeline", build)
    return folder / "run", json.loads((folder / "summary.json").read_text())


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny pretraining run (TINY_RESNET, 1 step: the tests that read it are about ResNet-18 files) for every test that needs a real checkpoint:
    RUN/config.yaml, RUN/checkpoints/last.pt, RUN/encoder.pt and whatever else training writes.

    Shared by the whole session, so READ ONLY: a test that changes it takes `trained_run_copy`.
    Teardown checks that no file in it changed (a change would make other tests order-dependent).
    """
    from byol.config import load_config
    from byol.pretrain.loop import train
    run = built_once(tmp_path_factory, "trained", lambda folder: train(load_config(
        None, TINY_RESNET + [f"trainer.run_dir={folder / 'run'}", "trainer.max_steps=1"]))) / "run"
    before = _digests(run)
    yield run
    assert _digests(run) == before, f"a test changed the shared trained run {run}: use trained_run_copy"


@pytest.fixture
def trained_run_copy(trained_run, tmp_path):
    """A private copy of `trained_run` in this test's tmp_path, free to change (resume, damage, delete)."""
    return Path(shutil.copytree(trained_run, tmp_path / "trained-run"))


@pytest.fixture
def separable(tmp_path):
    """(train, test) stores of 5 well-separated 8-d clusters, 300 and 100 rows, several shards each."""
    xtr, ytr = clusters(300, classes=5, seed=0)
    xte, yte = clusters(100, classes=5, seed=1)
    return write_store(tmp_path / "f" / "train", xtr, ytr), write_store(tmp_path / "f" / "test", xte, yte)


@pytest.fixture
def overlapping(tmp_path):
    """Hard enough that methods disagree somewhere: agreement tests mean something.
    (train store, test store, (x_train, y_train, x_test, y_test) as arrays)."""
    xtr, ytr = clusters(400, classes=6, dim=10, sep=1.0, seed=2)
    xte, yte = clusters(150, classes=6, dim=10, sep=1.0, seed=3)
    write_store(tmp_path / "o" / "train", xtr, ytr), write_store(tmp_path / "o" / "test", xte, yte)
    return tmp_path / "o" / "train", tmp_path / "o" / "test", (xtr, ytr, xte, yte)
