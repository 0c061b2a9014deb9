"""The notebooks execute headless on a tiny checkpoint (papermill-style injected parameters)."""
import json
from pathlib import Path

import h5py
import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def headless_backend(monkeypatch):
    """Servers and CI often set MPLBACKEND=Agg, which the kernel inherits: the notebooks must still
    draw into their outputs (their `%matplotlib inline`), so they are executed with it set."""
    monkeypatch.setenv("MPLBACKEND", "Agg")


def execute(notebook: Path, parameters: dict, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(notebook, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged, f"{notebook.name} needs a cell tagged 'parameters'"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be stripped"
    injected = "\n".join(f"{k} = {json.dumps(v)}" for k, v in parameters.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(injected))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


@pytest.fixture
def tiny_encoder(trained_run):
    """The encoder of the shared tiny trained run (1 step, 32 px digits; tests/conftest.py). Read only."""
    return trained_run / "encoder.pt"


@pytest.mark.long
def test_save_feature_tensor_notebook_writes_a_store(tiny_encoder, tmp_path):
    out = tmp_path / "features"
    nb = execute(ROOT / "notebooks" / "save_feature_tensor.ipynb",
                 {"checkpoint": str(tiny_encoder), "split": "test", "out_dir": str(out),
                  "overrides": ["data.max_images=0"]}, ROOT)
    manifest = json.loads((out / "test" / "manifest.json").read_text())
    assert manifest["n_rows"] == 360 and manifest["dim"] == 512
    with h5py.File(out / "test" / manifest["shards"][0]["name"]) as f:
        assert f["embeddings"].shape == (360, 512)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, "the PCA scatter was not drawn"


def test_explore_results_notebook_rebuilds_table_and_plots(pipeline_run):
    run, summary = pipeline_run
    # 50 rows in the 2-D views: t-SNE's time grows with them, and the figures are counted, not read
    nb = execute(ROOT / "notebooks" / "explore_results.ipynb", {"run_dir": str(run), "max_points": 50}, ROOT)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(tables) == 1
    for method, top1 in summary["top1"].items():      # every result, with the figure the pipeline printed
        assert f"| {method} |" in tables[0] and f"| {top1:.1f} |" in tables[0]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3    # curves, 2-D views, confusion
    text = "".join(o.get("text", "") for o in outputs)
    assert "hardest class:" in text and text.count("test label") == 8
