"""Pretrain an encoder with BYOL (Grill et al. 2020) as a config file says (same as `byol train`).

    python main.py                                      # ./config.yaml (STL-10, downloads if absent)
    python main.py --config configs/demo.yaml           # embedded digits dataset, no download
    python main.py --config configs/short_cpu.yaml data.name=cifar10 trainer.max_time=2h   # a CPU budget
    python main.py trainer.max_epochs=1 data.root=/data # any section.key=value overrides the file
    python main.py --resume runs/byol                   # continue from runs/byol/checkpoints/last.pt
    torchrun --nproc-per-node=4 main.py                 # DDP: nccl on GPUs, gloo on CPU

Full reference: byol/pretrain/train_command.py (`python main.py --help`).
"""
from byol.pretrain.train_command import main

if __name__ == "__main__":
    main(prog="python main.py")
