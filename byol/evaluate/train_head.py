"""Train a classification head on stored embeddings (HDF5 feature store), test it, save it.

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
import argparse

from byol.cli import run_command
from byol.evaluate.options import add_common_arguments, add_head_arguments, options_from_args


def main(argv=None, prog: str = "byol eval") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_head_arguments(parser)
    add_common_arguments(parser)
    args = parser.parse_args(argv)

    def run():
        from byol.evaluate.runner import run_head
        return run_head(args.head, args.train, args.test, options_from_args(args))

    run_command(run)


if __name__ == "__main__":
    main()
