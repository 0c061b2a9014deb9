"""Pretrain an encoder with BYOL (Grill et al. 2020) as a config file says.

    byol train ... is the same command as python main.py ... (both call main() below)
    python main.py                                      # ./config.yaml (STL-10, downloads if absent)
    python main.py --config configs/demo.yaml           # embedded digits dataset, no download
    python main.py --config configs/short_cpu.yaml data.name=cifar10 trainer.max_time=2h   # a CPU budget
    python main.py trainer.max_epochs=1 data.root=/data # any section.key=value overrides the file
    python main.py data.name=folder data.root=~/photos  # your own images (class subfolders optional)
    python main.py --resume runs/byol                   # continue from runs/byol/checkpoints/last.pt
    torchrun --nproc-per-node=4 main.py                 # DDP: nccl on GPUs, gloo on CPU
    torchrun --nnodes=2 --node-rank=0 --master-addr=HOST --master-port=29500 \\
             --nproc-per-node=8 main.py                 # two nodes (run with --node-rank=1 on the other)

Writes RUN_DIR/config.yaml, metrics.jsonl, checkpoints/last.pt and encoder.pt, and prints a JSON
summary as its last line. On --resume the run's saved config is used; overrides still apply.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from byol.command_line import DEFAULT_CONFIG, add_config_arguments, check_overrides, parse_arguments, run_command
from byol.config import Config, load_config


def build_parser(prog: str = "byol train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "YAML config (default: ./config.yaml; not read with --resume)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    return parser


def main(argv: list[str] | None = None, prog: str = "byol train") -> None:
    args = parse_arguments(build_parser(prog), argv)

    def run():
        overrides = check_overrides(args.overrides)
        from byol.pretrain.loop import train   # torch: after the arguments are known to be good
        cfg, resume = config_for_run(args.config, overrides, args.resume)
        return train(cfg, resume=resume)

    run_command(run)


# ------------------------------------------------------------------ fresh or resumed (also `byol pipeline`)
def config_for_run(config_file: str | Path | None, overrides: list[str], resume: str | Path | None = None, *,
                   resume_if_found: bool = False) -> tuple[Config, Path | None]:
    """The config a training run uses and the run directory it continues (None: a fresh run).

    resume=RUN_DIR continues that run: the config saved in its checkpoints/last.pt (or its
    config.yaml when it stopped before the first checkpoint) with `overrides` on top; config_file
    is not read. Otherwise config_file (default ./config.yaml) <- overrides, and with
    resume_if_found (the pipeline) a trainer.run_dir already holding checkpoints/last.pt is
    continued in the same way. trainer.device is checked against this machine here, so a wrong
    one is named as that config key before anything starts.
    """
    from byol.pretrain.checkpoint import resume_config   # torch: only commands that train get here
    cfg = None
    if resume is None:
        cfg = load_config(config_file or DEFAULT_CONFIG, overrides)
        found = Path(cfg.trainer.run_dir) / "checkpoints" / "last.pt"
        if resume_if_found and found.is_file():
            logging.getLogger("byol").info("found %s: resuming that run", found)
            resume = found.parent.parent
    elif config_file is not None:
        logging.getLogger("byol").warning("--config %s is not read with --resume: the run continues with "
                                          "its saved config (overrides still apply)", config_file)
    if resume is not None:
        resume = Path(resume)
        cfg = resume_config(resume, overrides)
    check_training_device(cfg.trainer.device)
    return cfg, resume


def check_training_device(preference: str) -> None:
    """trainer.device usable here (under torchrun: for this LOCAL_RANK)? Else a ConfigError naming the key."""
    from byol.base.distributed import DeviceError, resolve_device
    try:
        resolve_device(preference, int(os.environ.get("LOCAL_RANK", "0")))
    except DeviceError as e:
        raise e.for_setting("config key 'trainer.device'", "trainer.device=") from None


if __name__ == "__main__":
    main()
