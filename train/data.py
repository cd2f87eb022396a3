"""Resumable, sharded batches: the data position of a run is one number (micro-batches consumed per process), and
the batches from any position on are the same whether the run was interrupted there or not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler


class ShardedSampler(Sampler[int]):
    """Epoch `e`'s order is a permutation drawn from (seed, e) alone; process `rank` takes every `world_size`-th
    index of it (the tail that does not divide evenly is dropped, so every process sees as many samples), and
    `set_epoch(e, start)` skips this process's first `start` samples without loading them."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        self.size, self.rank, self.world_size, self.seed, self.shuffle = size, rank, world_size, seed, shuffle
        self.per_rank = size // world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        mine = order[: self.per_rank * self.world_size][self.rank :: self.world_size]
        return iter(mine[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


def micro_batches(
    dataset: Dataset,
    batch_size: int,
    collate: Callable[[list[Any]], Any],
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    shuffle: bool = True,
) -> Iterator[Any]:
    """Endless micro-batches for one process, from micro-batch number `start` on (epochs roll over; an epoch's
    incomplete last batch is dropped). DataLoader seeds come from (seed, epoch), never from the global RNG, so
    starting an iterator mid-run does not shift the random stream the model draws from. `shuffle=False` keeps the
    dataset's own order (a data mixture that is random already and groups its samples into batches)."""
    sampler = ShardedSampler(len(dataset), rank, world_size, seed, shuffle=shuffle)
    per_epoch = sampler.per_rank // batch_size
    epoch, offset = divmod(start, per_epoch)
    while True:
        sampler.set_epoch(epoch, offset * batch_size)
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers,
            drop_last=True, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch),
            persistent_workers=False,
        )
        yield from loader
        epoch, offset = epoch + 1, 0


def check_dataset(dataset: Dataset, batch_size: int, world_size: int) -> int:
    """Micro-batches per epoch and process; a clear error when the dataset cannot fill one batch per process."""
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError("the training dataset must be map-style (len() and indexing) to shard and resume exactly")
    per_epoch = (len(dataset) // world_size) // batch_size
    if per_epoch == 0:
        raise ValueError(f"the training dataset has {len(dataset)} samples, fewer than batch_size={batch_size} "
                         f"x {world_size} process(es)")
    return per_epoch
