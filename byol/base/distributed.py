"""One device path for one process or many: plain `python` needs no process group; `torchrun`
sets RANK/WORLD_SIZE/LOCAL_RANK and we join a group (nccl on CUDA, gloo on CPU).

Only rank 0 writes files; every rank computes. The sampler below is torch's DistributedSampler
(shuffled per epoch with `set_epoch`, equal shares, no sample twice in an epoch) plus the ability
to start mid-epoch, so a resumed run sees exactly the batches the interrupted one would have.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from byol.base.errors import ConfigError


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class DeviceError(ConfigError):
    """A device this machine cannot give. It carries the value and the reason, not the name of the
    setting: each caller says which flag or config key held the value (`for_setting`)."""

    def __init__(self, value: str, reason: str):
        super().__init__(f"device {value!r}: {reason}; use cpu or auto")
        self.value, self.reason = value, reason

    def for_setting(self, name: str, assign: str) -> ConfigError:
        """The same error in the words of its setting: name e.g. "--device" or "config key
        'trainer.device'", assign how a value is given to it, e.g. "--device " or "trainer.device="."""
        return ConfigError(f"{name} is {self.value!r} but {self.reason}; use {assign}cpu or {assign}auto")


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when a GPU is visible, else cpu. DeviceError when unusable here."""
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(preference, "that is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(preference, "no CUDA GPU is visible")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise DeviceError(preference, f"{device} is not among the {n} visible CUDA GPU(s) (cuda:0 to cuda:{n - 1})")
    return device


def setup(device_preference: str = "auto") -> Context:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (a copy; `value` itself when not distributed). One collective."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum over ranks (e.g. which stop signal every rank reports)."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class ResumableSampler(Sampler[int]):
    """DistributedSampler (shuffle, drop_last) whose first `skip_batches` batches of the current
    epoch are left out: used once, for the epoch a resumed run restarts in."""

    def __init__(self, n: int, rank: int, world_size: int, batch_size: int, seed: int):
        self.inner = DistributedSampler(range(n), num_replicas=world_size, rank=rank,
                                        shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip_batches = skip_batches

    def __iter__(self):
        indices = list(self.inner)
        return iter(indices[self.skip_batches * self.batch_size:])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip_batches * self.batch_size)

    def batches_per_epoch(self) -> int:
        return len(self.inner) // self.batch_size
