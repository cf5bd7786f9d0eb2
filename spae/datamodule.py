"""Lightning DataModule over prepared image datasets (HF `datasets` with an `image` column of PIL images).

Training order is a pure function of (seed, position in the stream): an endless sequence of shuffled
epochs over the concatenated datasets, drawn per epoch from torch.Generator(seed + epoch). When a run
resumes from a checkpoint, `train_dataloader()` (called by Lightning after the training state is
restored) starts the stream where the checkpoint left off, so an interrupted run sees exactly the
batches an uninterrupted run would. Hand-written: Lightning restarts an epoch's data from its beginning
on a mid-epoch resume, and our runs are shorter than one epoch.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ImageDataset(Dataset):
    """Rows of one or more datasets with an `image` column -> {"image": FloatTensor[3, S, S] in [0, 1]}."""

    def __init__(self, datasets: Sequence, image_size: int, channels: int = 3):
        self.parts = [d for d in datasets if len(d)]
        if not self.parts:
            raise ValueError("no training images: every dataset given to ImageDataset is empty")
        for d in self.parts:
            if "image" not in getattr(d, "column_names", ["image"]):
                raise ValueError(f"dataset has no `image` column (columns: {d.column_names})")
        self.offsets = torch.tensor([0] + [len(d) for d in self.parts]).cumsum(0)
        self.image_size, self.channels = int(image_size), int(channels)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict:
        part = int(torch.searchsorted(self.offsets, index, right=True)) - 1
        image = self.parts[part][int(index - self.offsets[part])]["image"]
        return image

    def collate(self, images: list) -> dict:
        from spae.data.images import to_tensor

        return {"image": to_tensor(images, self.image_size, self.channels)}


class StreamSampler(Sampler[int]):
    """`length` indices of an endless stream of seeded shuffles of range(n), starting at `start`."""

    def __init__(self, n: int, seed: int, start: int, length: int):
        self.n, self.seed, self.start, self.length = int(n), int(seed), int(start), int(length)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        pos, end = self.start, self.start + self.length
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            take = perm[offset: offset + (end - pos)]
            yield from take.tolist()
            pos += len(take)


class MixedStreamSampler(Sampler[int]):
    """Like StreamSampler, over several datasets concatenated (sizes `sizes`), each drawn with its own
    share `weights` of the stream instead of in proportion to its size. Position i of the stream lies in
    block i // BLOCK, whose dataset order is a seeded shuffle of the datasets' quotas (largest remainder);
    each dataset's images come from its own endless seeded shuffles. Everything is a pure function of the
    position, so a resumed run continues the same stream (as StreamSampler does)."""

    BLOCK = 1000

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int, start: int, length: int):
        if len(sizes) != len(weights) or not sizes or min(sizes) < 1:
            raise ValueError(f"one positive size per weight needed, got sizes {list(sizes)}, weights {list(weights)}")
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"pretraining mix weights must be >= 0 and not all 0, got {list(weights)}")
        self.sizes, self.seed, self.start, self.length = [int(n) for n in sizes], int(seed), int(start), int(length)
        self.offsets = [0, *torch.tensor(self.sizes).cumsum(0).tolist()[:-1]]
        self.quotas = largest_remainder([w / sum(weights) for w in weights], self.BLOCK)

    def __len__(self) -> int:
        return self.length

    def _block_order(self, block: int) -> torch.Tensor:
        order = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.quotas))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + block)
        return order[torch.randperm(self.BLOCK, generator=gen)]

    def _local_image(self, part: int, j: int, perms: dict) -> int:
        """The j-th image of dataset `part`'s own stream (seeded shuffles, one per pass; memoised in perms)."""
        epoch, offset = divmod(j, self.sizes[part])
        if (part, epoch) not in perms:
            gen = torch.Generator().manual_seed((self.seed + 7919 * (part + 1)) * 1_000_003 + epoch)
            perms[(part, epoch)] = torch.randperm(self.sizes[part], generator=gen).tolist()
        return perms[(part, epoch)][offset]

    def __iter__(self) -> Iterator[int]:
        pos, end, perms = self.start, self.start + self.length, {}
        while pos < end:
            block, offset = divmod(pos, self.BLOCK)
            order = self._block_order(block)
            seen = [block * q for q in self.quotas]  # images of each dataset before this block
            for part in order[:offset].tolist():
                seen[part] += 1
            for part in order[offset: offset + (end - pos)].tolist():
                yield self.offsets[part] + self._local_image(part, seen[part], perms)
                seen[part] += 1
                pos += 1


def largest_remainder(shares: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to `total` closest to shares x total (Hamilton's method)."""
    raw = [s * total for s in shares]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


PRETRAIN_MIXES = ("proportional", "balanced")


class PretrainDataModule(pl.LightningDataModule):
    """mix: how the pretraining sets share the stream. proportional: one shuffle of their union (each in
    proportion to its size); balanced: equal shares, whatever their sizes (a small set is repeated)."""

    def __init__(self, datasets: Sequence, image_size: int, batch_size: int, seed: int, total_batches: int,
                 num_workers: int = 0, channels: int = 3, mix: str = "proportional"):
        super().__init__()
        if batch_size < 1 or total_batches < 1:
            raise ValueError(f"batch_size and total_batches must be >= 1, got {batch_size}, {total_batches}")
        if mix not in PRETRAIN_MIXES:
            raise ValueError(f"method.pretrain_mix={mix!r}; valid: {', '.join(PRETRAIN_MIXES)}")
        self.dataset = ImageDataset(datasets, image_size, channels)
        self.batch_size, self.seed, self.total_batches = int(batch_size), int(seed), int(total_batches)
        self.num_workers, self.mix = int(num_workers), mix

    def batches_done(self) -> int:
        """Batches the (restored) training state has already consumed."""
        trainer = self.trainer
        if trainer is None:
            return 0
        per_batch = getattr(trainer.lightning_module, "optimizer_steps_per_batch", 1)
        return trainer.global_step // per_batch

    def world_size(self) -> int:
        return int(self.trainer.world_size) if self.trainer is not None else 1

    def train_dataloader(self) -> DataLoader:
        done = self.batches_done()
        remaining = max(self.total_batches - done, 1)
        # Under DDP, Lightning deals this sampler's indices out to the processes in turn (rank r takes every
        # world-th): the stream covers every process's batches, so each step reads the next effective batch of
        # the one stream (before, each process read 1/world of it and then the same images again)
        step_images = self.batch_size * self.world_size()
        start, length = done * step_images, remaining * step_images
        if self.mix == "balanced" and len(self.dataset.parts) > 1:
            sizes = [len(part) for part in self.dataset.parts]
            sampler = MixedStreamSampler(sizes, [1.0] * len(sizes), self.seed, start, length)
        else:
            sampler = StreamSampler(len(self.dataset), self.seed, start, length)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=self.dataset.collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
