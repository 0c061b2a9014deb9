"""The `byol` command: one name on the PATH, one subcommand per stage (like git), each the very
same function as the script or module it mirrors.

    byol train ...        = python main.py ...                          (byol.pretrain.train_command)
    byol extract ...      = python -m byol.extract ...
    byol eval ...         = python eval/load_and_train.py ...           (byol.eval_command)
    byol baselines ...    = python eval/baselines.py ...                (byol.eval_command)
    byol latent ...       = python latent_eval/generate_latent_out.py ...
    byol export ...       = python -m byol.extract.export_command ...
    byol pipeline ...     = python -m byol.pipeline ...
    byol report ...       = python -m byol.report ...
    byol search ...       = python -m byol.search ...
    byol duplicates ...   = python -m byol.search.duplicates_command ...

One command rather than ten scripts: generic names such as `extract` or `report` would clash on
users' PATHs, and `byol --help` lists every stage in one place. Subcommands are imported only when
run, so `byol eval` never imports torch.
"""
from __future__ import annotations

import importlib
import sys

from byol import __version__

# subcommand: (module, or module:function when not its main, what it does)
SUBCOMMANDS = {
    "train": ("byol.pretrain.train_command", "pretrain an encoder with BYOL (main.py)"),
    "extract": ("byol.extract.extract_command", "embed a dataset split into an HDF5 feature store"),
    "eval": ("byol.eval_command:head_main", "train and test an MLP or linear head on stored features"),
    "baselines": ("byol.eval_command:baselines_main", "logistic regression, kNN, PCA baselines on stored features"),
    "latent": ("byol.extract.latent_command", "latent vectors for any images (store, .npy or .csv)"),
    "export": ("byol.extract.export_command", "export the encoder to TorchScript or ONNX"),
    "pipeline": ("byol.pipeline", "train, extract, evaluate and report in one command"),
    "report": ("byol.report.report_command", "report.md and plots from a run directory"),
    "search": ("byol.search.search_command", "the nearest stored images of any images (or store rows)"),
    "duplicates": ("byol.search.duplicates_command", "groups of near-duplicate images in a feature store"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"usage: byol SUBCOMMAND [ARGS ...]   (byol {__version__})", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in SUBCOMMANDS.items()]
    lines += ["", "byol SUBCOMMAND --help shows the subcommand's own options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"byol {__version__}")
        return
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}; choose one of {', '.join(SUBCOMMANDS)} (byol --help)",
              file=sys.stderr)
        sys.exit(2)
    module, _, function = SUBCOMMANDS[name][0].partition(":")
    getattr(importlib.import_module(module), function or "main")(rest, prog=f"byol {name}")


if __name__ == "__main__":
    main()
