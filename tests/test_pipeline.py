"""The one-command pipeline on the embedded digits: pretrain -> extract -> evaluate -> report."""
import json
from pathlib import Path

from byol.report.report_command import write_report

from testkit import run_cli


def test_pipeline_runs_end_to_end_and_report_regenerates(pipeline_run):
    run, out = pipeline_run      # tests/conftest.py: configs/demo.yaml with tiny settings
    assert set(out["top1"]) == {"linear", "mlp", "logreg", "knn", "start-logreg", "start-knn", "start-bn-logreg",
                                "start-bn-knn", "pca-logreg", "pca-knn"}
    assert all(10 <= v <= 100 for v in out["top1"].values())       # 10 classes: chance is 10%
    assert out["top1"]["pca-knn"] > 80                               # raw digits are easy for kNN
    report = Path(out["report"]).read_text()
    for needle in ("BYOL + MLP head", "raw pixels + PCA + kNN", "loss.png", "embedding.png",
                   "confusion.png", "Resolved config", "git_revision"):
        assert needle in report, needle
    for png in ("loss.png", "knn.png", "embedding.png", "confusion.png"):
        assert (run / png).stat().st_size > 1000
    info = json.loads((run / "pipeline.json").read_text())
    assert {"pretrain", "extract train", "pixels test", "report"} <= set(info["stage_seconds"])

    (run / "report.md").unlink()
    (run / "loss.png").unlink()
    cli = run_cli("-m", "byol.report", run)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout.strip().splitlines()[-1])["report"] == str(run / "report.md")
    assert (run / "loss.png").is_file() and "BYOL + kNN" in (run / "report.md").read_text()


def test_report_of_a_run_without_evaluation(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": i, "loss": 4 - i / 10, "collapse_std": 0.5}) for i in range(1, 6)))
    text = write_report(tmp_path).read_text()
    assert "loss.png" in text and "Results" not in text
    assert "No neighbour gallery or projector: the run directory lists no BYOL train and test stores" in text
