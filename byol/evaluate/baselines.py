"""Baselines on stored features (HDF5 feature store): logistic regression, kNN, PCA + either.

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
  pca-logreg  standardise, IncrementalPCA to --pca-components (128), then logreg as above (lbfgs on N x 128).
  pca-knn     standardise, IncrementalPCA, then kNN (euclidean, uniform vote by default).

Hyper-parameters are chosen on a validation split carved from the training store (--val-fraction,
--seed), never on the test store; the chosen value is refitted on all training rows. Results go to
<train>/../results/<method>.json with <method>-confusion.csv/.npy (never overwritten:
<method>-2.json, ... unless --overwrite); the JSON is also the last line printed (top1/top5 in %).
Bad input exits 2 with a one-line error.
"""
import argparse

from byol.cli import run_command
from byol.evaluate.options import add_baseline_arguments, add_common_arguments, options_from_args


def main(argv=None, prog: str = "byol baselines") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_baseline_arguments(parser)
    add_common_arguments(parser)
    args = parser.parse_args(argv)

    def run():
        from byol.evaluate.runner import run_baseline
        return run_baseline(args.method, args.train, args.test, options_from_args(args))

    run_command(run)


if __name__ == "__main__":
    main()
