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


class PretrainDataModule(pl.LightningDataModule):
    def __init__(self, datasets: Sequence, image_size: int, batch_size: int, seed: int, total_batches: int,
                 num_workers: int = 0, channels: int = 3):
        super().__init__()
        if batch_size < 1 or total_batches < 1:
            raise ValueError(f"batch_size and total_batches must be >= 1, got {batch_size}, {total_batches}")
        self.dataset = ImageDataset(datasets, image_size, channels)
        self.batch_size, self.seed, self.total_batches = int(batch_size), int(seed), int(total_batches)
        self.num_workers = int(num_workers)

    def batches_done(self) -> int:
        """Batches the (restored) training state has already consumed."""
        trainer = self.trainer
        if trainer is None:
            return 0
        per_batch = getattr(trainer.lightning_module, "optimizer_steps_per_batch", 1)
        return trainer.global_step // per_batch

    def train_dataloader(self) -> DataLoader:
        done = self.batches_done()
        remaining = max(self.total_batches - done, 1)
        sampler = StreamSampler(len(self.dataset), self.seed, done * self.batch_size, remaining * self.batch_size)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=self.dataset.collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
