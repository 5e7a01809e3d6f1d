"""Data loaders for one of N data-parallel workers (pure torch: no process group is needed).

Training shards come from :class:`~torch.utils.data.distributed.DistributedSampler`: every
worker draws the same permutation for an epoch (``set_epoch``) and keeps its slice, so an
epoch resumed from a checkpoint sees the same order as if it had never stopped. Evaluation
shards are strided subsets without padding, so summed counts over workers are exact.
"""

from __future__ import annotations

import math

from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler


def per_worker_batch(batch_size: int, world_size: int) -> int:
    """Each worker's share of a global batch (rounded up, at least 1)."""
    return max(1, math.ceil(batch_size / world_size))


def train_shard_loader(
    dataset: Dataset, batch_size: int, rank: int, world_size: int, seed: int = 0, num_workers: int = 0,
) -> DataLoader:
    """Shuffled loader over this worker's shard; call ``loader.sampler.set_epoch(epoch)`` each epoch.

    ``batch_size`` is the global batch: each worker takes its share of it.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=per_worker_batch(batch_size, world_size), sampler=sampler,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


def eval_shard_loader(dataset: Dataset, batch_size: int, rank: int, world_size: int, num_workers: int = 0) -> DataLoader:
    """Ordered loader over samples ``rank, rank + N, ...``: the shards cover the set exactly once."""
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      persistent_workers=num_workers > 0)
