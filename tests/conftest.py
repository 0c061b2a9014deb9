"""Fixtures shared by several test files (their helpers and constants: tests/testkit.py)."""
import hashlib
import shutil
from pathlib import Path

import pytest

from byol.pipeline import run_pipeline
from testkit import TINY_RESNET, clusters, write_store

REPO = Path(__file__).resolve().parents[1]
PIPELINE_TINY = ["data.max_images=360", "data_transforms.input_shape=(16,16,3)", "network.small_stem=false",
                 "network.projection_head.mlp_hidden_size=32", "network.projection_head.projection_size=16",
                 "trainer.batch_size=64", "trainer.max_steps=2", "trainer.knn_every=1", "trainer.progress=false",
                 "trainer.tensorboard=false"]


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """One tiny run of the whole pipeline on the embedded digits: (run dir, its summary)."""
    run = tmp_path_factory.mktemp("pipeline") / "run"
    summary = run_pipeline(str(REPO / "configs" / "demo.yaml"), PIPELINE_TINY + [f"trainer.run_dir={run}"],
                           head_epochs=2)
    return run, summary


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
    run = tmp_path_factory.mktemp("trained") / "run"
    train(load_config(None, TINY_RESNET + [f"trainer.run_dir={run}", "trainer.max_steps=1"]))
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
