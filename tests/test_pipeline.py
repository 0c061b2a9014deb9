"""The one-command pipeline on the embedded digits: pretrain -> extract -> evaluate -> report."""
import json
import shutil
from pathlib import Path

from byol.report.report_command import write_report

from testkit import REPO, run_main


def test_pipeline_runs_end_to_end_and_report_regenerates(pipeline_run, tmp_path, capsys):
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

    # regenerated in a copy: the shared run is read by other tests, perhaps at this moment (xdist)
    copy = Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("features*")))
    (copy / "report.md").unlink()
    (copy / "loss.png").unlink()
    # `python -m byol.report COPY`, its __main__.py run in this process; the stores: where pipeline.json
    # says, in the shared run
    code, stdout, stderr = run_main(REPO / "byol" / "report" / "__main__.py", [copy], capsys)
    assert code == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["report"] == str(copy / "report.md")
    assert (copy / "loss.png").is_file() and "BYOL + kNN" in (copy / "report.md").read_text()


def test_report_of_a_run_without_evaluation(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": i, "loss": 4 - i / 10, "collapse_std": 0.5}) for i in range(1, 6)))
    text = write_report(tmp_path).read_text()
    assert "loss.png" in text and "Results" not in text
    assert "No neighbour gallery or projector: the run directory lists no BYOL train and test stores" in text
