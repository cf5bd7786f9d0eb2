"""A Lightning callback that draws a tokenizer's pyramid during training: every `every_n_steps` training batches,
the reconstructions of a fixed batch of pretraining images from layers 1..l, with layer l's words in its
token cells (spae.tracking.pyramid_images), one image list per layer (`images/layer<l>`), the originals once.

Drawing must not change the training: the module is put in eval mode and back (each submodule's own mode
restored), gradients are off, and the global RNG state is saved and restored around it.
"""
from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch

from spae.tracking.pyramid_images import caption, layer_panels, to_pil

PANEL_SIZE = 256


def fixed_images(dataset: Any, count: int) -> torch.Tensor:
    """`count` images spread evenly over a spae.datamodule.ImageDataset (every pretraining set is seen)."""
    if count < 1:
        raise ValueError(f"logger.image_count={count}: give at least 1 image to draw")
    n = min(count, len(dataset))
    indices = torch.linspace(0, len(dataset) - 1, n).round().long().tolist()
    return dataset.collate([dataset[i] for i in indices])["image"]


class PyramidImageLogger(pl.Callback):
    def __init__(self, images: torch.Tensor, log_images: Callable[[dict, int], None], every_n_steps: int,
                 size: int = PANEL_SIZE):
        if every_n_steps < 1:
            raise ValueError(f"logger.image_every_n_steps={every_n_steps}: give a number of steps >= 1 (0 = off)")
        self.images, self.log_images, self.every, self.size = images, log_images, int(every_n_steps), int(size)
        self.logged_batches: list[int] = []

    @staticmethod
    def _batches_done(trainer: pl.Trainer, module: pl.LightningModule) -> int:
        return trainer.global_step // getattr(module, "optimizer_steps_per_batch", 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = self._batches_done(trainer, pl_module)
        if trainer.is_global_zero and done > 0 and done % self.every == 0 and done not in self.logged_batches:
            self._log(trainer, pl_module, done)

    def on_train_end(self, trainer, pl_module) -> None:
        """The final model too, when the last step was not on the interval."""
        done = self._batches_done(trainer, pl_module)
        if trainer.is_global_zero and done > 0 and done not in self.logged_batches:
            self._log(trainer, pl_module, done)

    def _log(self, trainer: pl.Trainer, module: pl.LightningModule, done: int) -> None:
        panels = self.render(module)
        if not self.logged_batches:
            panels["images/original"] = [(to_pil(image, self.size), "original") for image in self.images]
        self.logged_batches.append(done)
        self.log_images(panels, trainer.global_step)

    def render(self, module: pl.LightningModule) -> dict[str, list]:
        """{"images/layer<l>": [(panel, caption) per image]} from the module's current weights."""
        modes = [(m, m.training) for m in module.modules()]
        devices = [module.device] if module.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                module.eval()
                pyramid = module.encode(self.images.to(module.device))
                recons = [module.decode(pyramid, layers=l).cpu() for l in range(1, pyramid.num_layers + 1)]
        finally:
            for m, mode in modes:
                m.training = mode
        panels = layer_panels(recons, pyramid.words, self.size)
        return {f"images/layer{l + 1}": [(panel, f"layers 1-{l + 1}: {caption(pyramid.words[l][i])}")
                                         for i, panel in enumerate(layer)] for l, layer in enumerate(panels)}
