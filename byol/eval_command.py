"""The two commands over stored features, both torch-free: `byol eval` (eval/load_and_train.py)
trains and tests a classification head, `byol baselines` (eval/baselines.py) runs logistic
regression, kNN and PCA baselines. Each parses its flags (byol.evaluate.options, declared with the
`Options` defaults), runs one evaluation (byol.evaluate.runner) and prints its result JSON last;
`--help` prints HEAD_HELP or BASELINES_HELP below.
"""
from __future__ import annotations

import argparse
from typing import Callable

from byol.command_line import run_command
from byol.evaluate.options import add_baseline_arguments, add_common_arguments, add_head_arguments, options_from_args

HEAD_HELP = """Train a classification head on stored embeddings (HDF5 feature store), test it, save it.

    python eval/load_and_train.py --train features/train --test features/test --head mlp
    python eval/load_and_train.py --train features/train --test features/test --head linear
    python eval/load_and_train.py --train features/train --test features/test --head mlp \\
        --hidden 1024,512 --dropout 0.2 --epochs 50 --lr 1e-3 --batch-size 512 --weight-decay 1e-4 --seed 1
    python eval/load_and_train.py ... --val-fraction 0 --epochs 20     # no selection: exactly 20 epochs

Reads only the feature stores, and never imports torch. The head (numpy; AdamW over shuffled
row blocks; inputs standardised with statistics from a streaming pass) trains for up to --epochs
on the training rows outside a validation split (--val-fraction of the labelled training rows,
seeded); the best epoch count on validation is then refitted on all training rows, and that
model's test figure is reported.

Writes the head to --out-head (default <train>/../heads/<head>.safetensors; load it with
byol.evaluate.head_file.load_head, or into torch with safetensors.torch.load_file), the results to
<train>/../results/<head>.json with <head>-confusion.csv/.npy (never overwritten: <head>-2.json,
... unless --overwrite), and prints the same JSON object as its last line (top1/top5 in %).
Bad input exits 2 with a one-line error.
"""

BASELINES_HELP = """Baselines on stored features (HDF5 feature store): logistic regression, kNN, PCA + either.

    python eval/baselines.py --train features/train --test features/test --method logreg
    python eval/baselines.py --train features/train --test features/test --method knn
    python eval/baselines.py --train ... --test ... --method knn --k 200 --knn-weighting temperature   # SSL papers
    python eval/baselines.py --train ... --test ... --method knn --k 20 --metric euclidean --knn-weighting uniform
    python eval/baselines.py --train ... --test ... --method all
    # the STL-10 table's PCA rows (stores extracted with --encoder pixels):
    python eval/baselines.py --train pixels/train --test pixels/test --method pca-logreg --C 1 --pca-components 128
    python eval/baselines.py --train pixels/train --test pixels/test --method pca-knn --k 10

Methods:
  logreg      StandardScaler (streaming partial_fit) + LogisticRegression(lbfgs, max_iter 1000), C from
              --C-grid on validation (or --C). Holds the standardised train matrix in memory when the
              estimate fits under --max-memory-mb, else streams an SGD logistic regression over shuffled blocks, --epochs passes at most
              (JSON: solver, streams).
  knn         running top-k over train blocks; cosine + temperature vote (Wu et al. 2018, T=0.07) by
              default, --metric euclidean / --knn-weighting uniform; k from --k-grid on validation (or --k).
  pca-logreg  standardise, PCA to --pca-components (128: exact, from a streamed covariance, up to 4,096-d;
              IncrementalPCA beyond, or as --pca-solver says), then logreg as above (lbfgs on N x 128).
  pca-knn     standardise, PCA as above, then kNN (euclidean, uniform vote by default).

Hyper-parameters are chosen on a validation split carved from the training store (--val-fraction,
--seed), never on the test store; the chosen value is refitted on all training rows. Results go to
<train>/../results/<method>.json with <method>-confusion.csv/.npy (never overwritten:
<method>-2.json, ... unless --overwrite); the JSON is also the last line printed (top1/top5 in %).
Bad input exits 2 with a one-line error.
"""


def head_main(argv=None, prog: str = "byol eval") -> None:
    evaluation_command(prog, HEAD_HELP, add_head_arguments, argv)


def baselines_main(argv=None, prog: str = "byol baselines") -> None:
    evaluation_command(prog, BASELINES_HELP, add_baseline_arguments, argv)


def evaluation_command(prog: str, doc: str, add_method_arguments: Callable[[argparse.ArgumentParser], None],
                       argv=None) -> None:
    """Parse the method's flags and the shared ones, then run the evaluation they ask for."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_method_arguments(parser)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    run_command(lambda: run_evaluation(args))


def run_evaluation(args: argparse.Namespace) -> dict:
    """A head (`byol eval`: args.head) or a baseline (`byol baselines`: args.method) on args.train/test."""
    from byol.evaluate.runner import run_baseline, run_head
    if hasattr(args, "head"):
        return run_head(args.head, args.train, args.test, options_from_args(args))
    return run_baseline(args.method, args.train, args.test, options_from_args(args))
