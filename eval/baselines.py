"""Baselines on stored features: logistic regression, kNN, PCA + either (same as `byol baselines`).

    python eval/baselines.py --train features/train --test features/test --method all   # logreg, knn, pca-*
    python eval/baselines.py --train ... --test ... --method knn --k 200 --knn-weighting temperature
    python eval/baselines.py --train pixels/train --test pixels/test --method pca-logreg --C 1

Never imports torch. Full reference: byol/eval_command.py (`--help` prints it).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, uninstalled

from byol.eval_command import baselines_main  # noqa: E402

if __name__ == "__main__":
    baselines_main(prog="python eval/baselines.py")
