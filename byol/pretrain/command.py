"""Pretrain an encoder with BYOL (Grill et al. 2020) as a config file says.

    byol train ... is the same command as python main.py ... (both call main() below)
    python main.py                                      # ./config.yaml (STL-10, downloads if absent)
    python main.py --config configs/demo.yaml           # embedded digits dataset, no download
    python main.py trainer.max_epochs=1 data.root=/data # any section.key=value overrides the file
    python main.py data.name=folder data.root=~/photos  # your own images (class subfolders optional)
    python main.py --resume runs/byol                   # continue from runs/byol/checkpoints/last.pt
    torchrun --nproc-per-node=4 main.py                 # DDP: nccl on GPUs, gloo on CPU
    torchrun --nnodes=2 --node-rank=0 --master-addr=HOST --master-port=29500 \\
             --nproc-per-node=8 main.py                 # two nodes (run with --node-rank=1 on the other)

Writes RUN_DIR/config.yaml, metrics.jsonl, checkpoints/last.pt and encoder.pt, and prints a JSON
summary as its last line. On --resume the run's saved config is used; overrides still apply.
"""
import argparse

from byol.cli import add_config_arguments, check_overrides, config_for_run, parse_arguments, run_command


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


if __name__ == "__main__":
    main()
