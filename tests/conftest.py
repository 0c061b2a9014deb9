"""Fixtures shared by several test files."""
from pathlib import Path

import pytest

from byol.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
PIPELINE_TINY = ["data.max_images=0", "data_transforms.input_shape=(16,16,3)",
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
