"""Train a classification head on stored embeddings, test it, save it (same as `byol eval`).

    python eval/load_and_train.py --train features/train --test features/test --head mlp
    python eval/load_and_train.py --train features/train --test features/test --head linear
    python eval/load_and_train.py ... --val-fraction 0 --epochs 20     # no selection: exactly 20 epochs

Never imports torch. Full reference: byol/eval_command.py (`--help` prints it).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, uninstalled

from byol.eval_command import head_main  # noqa: E402

if __name__ == "__main__":
    head_main(prog="python eval/load_and_train.py")
