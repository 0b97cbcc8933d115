"""The order of training data: a ``(seed, epoch)`` permutation shared by every rank, per-item
random transforms seeded by ``(seed, epoch, index)``, and the loader built from them, so a
resumed run sees exactly the batches the uninterrupted one would have."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler


class EpochSampler(Sampler):
    """A permutation fixed by ``(seed, epoch)``: identical on every rank (so accelerate's sharding
    is consistent) and reproducible after a resume. Keys are ``epoch * size + index`` so that
    ``SeededItems`` knows the epoch even in persistent workers."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter((torch.randperm(self.size, generator=g) + self.epoch * self.size).tolist())

    def __len__(self):
        return self.size


class SeededItems(Dataset):
    """Each item's random transforms (crops, flips, random clips) draw from the torch RNG seeded by
    ``(seed, epoch, index)``: the same augmentation for any number of workers or ranks, and a
    resumed run rebuilds the batch the loader had prefetched before the checkpoint bit for bit
    (with the global RNG, that prefetch would have shifted every later draw)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key: int):
        epoch, index = divmod(key, len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also reseed every GPU's generator
            # (outside fork_rng's restore) and, where CUDA is not initialised, queue that reseed
            # with a traceback: ~0.23 ms per item, 30 ms per digits batch of 128 on the dev CPU
            torch.random.default_generator.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.dataset[index]


def build_loader(dataset, config, num_processes: int, collate=None) -> tuple[DataLoader, EpochSampler | None]:
    """Map-style data: a ``(seed, epoch)`` permutation that accelerate shards. Streams
    (``IterableDataset``): read in order, each rank taking its slice of every global batch;
    a stream with ``set_epoch`` reshuffles per epoch."""
    common = dict(batch_size=config.batch_size, drop_last=True, num_workers=config.num_workers,
                  collate_fn=collate, persistent_workers=config.num_workers > 0,
                  # its own generator: starting an iterator (as a resume does) must not draw from
                  # the global RNG that the loss uses
                  generator=torch.Generator().manual_seed(config.seed))
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, **common), None
    if len(dataset) < config.batch_size * num_processes:
        raise ValueError(f"the data set has {len(dataset)} examples, fewer than one batch "
                         f"({config.batch_size} x {num_processes} processes); lower --batch_size")
    sampler = EpochSampler(len(dataset), config.seed)
    return DataLoader(SeededItems(dataset, config.seed), sampler=sampler, **common), sampler


def start_epoch(loader, sampler: EpochSampler | None, dataset, epoch: int, skip: int, accelerator, seed: int):
    """The loader for ``epoch``, its first ``skip`` batches passed over (a resume mid-epoch)."""
    if sampler is not None:
        sampler.epoch = epoch
    elif hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    loader = accelerator.skip_first_batches(loader, skip) if skip else loader
    if hasattr(loader, "set_epoch"):  # accelerate re-sets a stream's epoch from its own pass count
        loader.set_epoch(epoch)
    if getattr(loader, "generator", None) is not None:
        # worker seeds then depend on (seed, epoch) only, so a resumed epoch gets the same ones
        loader.generator.manual_seed(seed * 1_000_003 + epoch)
    return loader
