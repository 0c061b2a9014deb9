"""Pretrain a ResNet with BYOL (Grill et al. 2020) as a config file says.

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

from byol.cli import run_command


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: ./config.yaml)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args()

    def run():
        from byol.config import load_config
        from byol.pretrain.checkpoint import resume_config
        from byol.pretrain.loop import train
        if args.resume:
            cfg = resume_config(args.resume, args.overrides)
        else:
            cfg = load_config(args.config or "config.yaml", args.overrides)
        return train(cfg, resume=args.resume)

    run_command(run)


if __name__ == "__main__":
    main()
