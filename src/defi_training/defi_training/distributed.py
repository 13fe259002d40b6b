"""Multi-process training helpers: torchrun/DDP setup, rank-aware logging, resumable data order.

Launch with `torchrun --nproc_per_node N -m defi_training.train_cli ...` (or the `defi-train` script):
torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; we use NCCL on GPUs and gloo on CPU.
A plain `defi-train ...` runs as a single process (world size 1) with the same code path.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ''            # '' when not distributed
    device: torch.device = torch.device('cpu')

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref in ('', 'auto'):
        return torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else torch.device('cpu')
    device = torch.device(pref)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError(f"config key 'device' is {pref!r} but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device(f'cuda:{local_rank}')
    return device


def init_distributed(device_pref: str = 'auto') -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single-process DistInfo."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = resolve_device(device_pref, local_rank)
    if world_size <= 1:
        return DistInfo(device=device)
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, device=device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather_bytes(blob: bytes, info: DistInfo) -> list[bytes]:
    """Every rank's `blob`, in rank order, on every rank (uint8 tensors: no pickle involved)."""
    if not info.distributed:
        return [blob]
    mine = torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy()).to(info.device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=info.device) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([mine.numel()], dtype=torch.int64, device=info.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=info.device)
    padded[:mine.numel()] = mine
    out = [torch.zeros(longest, dtype=torch.uint8, device=info.device) for _ in range(info.world_size)]
    dist.all_gather(out, padded)
    return [bytes(o[:int(s.item())].cpu().numpy().tobytes()) for o, s in zip(out, sizes, strict=True)]


def broadcast_str(text: str, info: DistInfo) -> str:
    """Rank 0's string on every rank (e.g. the run directory name)."""
    if not info.distributed:
        return text
    return gather_bytes(text.encode() if info.is_main else b'', info)[0].decode()


# ---------------------------------------------------------------------------------------------------
# logging


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record):
        record.rank = self.rank
        return True


def get_logger(info: DistInfo, name: str = 'defi_train') -> logging.Logger:
    """Rank 0 logs INFO; other ranks only WARNING and above, prefixed with their rank."""
    logger = logging.getLogger(f'{name}.rank{info.rank}')
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_RankFilter(info.rank))
        prefix = '[rank %(rank)d] ' if info.distributed else ''
        handler.setFormatter(logging.Formatter(prefix + '%(message)s'))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if info.is_main else logging.WARNING)
    return logger


# ---------------------------------------------------------------------------------------------------
# data order


class ResumableBatchSampler(Sampler):
    """An endless stream of batches that can start at any optimizer step.

    Epoch e is DistributedSampler's seeded permutation (seed, epoch e) of the dataset, split across
    ranks; batches drop the ragged tail so every step consumes exactly one batch per rank. Because
    the order depends only on (seed, epoch, rank, world size), the position is just the step count:
    resuming at step s gives exactly the batches an uninterrupted run would have seen from step s.
    """

    def __init__(self, dataset, batch_size: int, rank: int, world_size: int, seed: int,
                 start_step: int = 0, shuffle: bool = True):
        self.sampler: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
            drop_last=len(dataset) >= world_size)
        self.batch_size = batch_size
        self.steps_per_epoch = len(self.sampler) // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f'the training split has {len(dataset)} samples: too few for batch_size={batch_size} '
                             f'on {world_size} rank(s); lower batch_size or add data')
        self.start_step = start_step

    def position(self, step: int) -> dict:
        return {'epoch': step // self.steps_per_epoch, 'batch_in_epoch': step % self.steps_per_epoch,
                'steps_per_epoch': self.steps_per_epoch}

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = divmod(self.start_step, self.steps_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for b in range(skip, self.steps_per_epoch):
                yield indices[b * self.batch_size:(b + 1) * self.batch_size]
            skip = 0
            epoch += 1


def fixed_batches(dataset_len: int, batch_size: int, max_batches: int, rank: int, world_size: int,
                  seed: int) -> list[list[int]]:
    """The same validation batches every time (seeded subset, split across ranks)."""
    if dataset_len == 0:
        return []
    order = torch.randperm(dataset_len, generator=torch.Generator().manual_seed(seed)).tolist()
    mine = order[rank::world_size]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    return batches[:max_batches]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: numpy/python RNGs from torch's per-worker seed (torch does only torch)."""
    s = torch.initial_seed() % (2 ** 32)
    np.random.seed(s)
    random.seed(s)


# ---------------------------------------------------------------------------------------------------
# DDP: state outside autograd, and a check that every rank holds the same weights


def sync_non_gradient_state(policy, info: DistInfo) -> None:
    """DDP keeps gradients in sync; GIDM's VQ also edits its codebook and usage EMA outside autograd
    (dead-code restarts from each rank's own batch), so rank 0's values are broadcast after each step."""
    if not info.distributed:
        return
    for module in policy.modules():
        if hasattr(module, 'non_gradient_state'):   # the VQ: codebook, usage, centre, init flag
            for t in module.non_gradient_state():
                dist.broadcast(t, src=0)


def weights_digest(policy) -> str:
    """sha256 over every parameter and buffer (to show all DDP ranks hold the same weights)."""
    h = hashlib.sha256()
    for name, t in sorted(policy.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
