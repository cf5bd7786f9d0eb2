"""Training the embedded CLIP with Lightning and open_clip's ClipLoss on image-caption pools.

Fast on a CPU because the frozen parts of both towers are computed once: every image goes through the
EfficientNet prefix once, every distinct caption through the frozen MiniLM layers once; each step then
runs only the trained suffixes (spae.clip.embedded). Each image has a pool of captions
(spae.clip.captions) and a random one is drawn per step. Pretraining sets share each batch by `mix`
(proportional, sqrt or balanced in their sizes). A batch holds at most one image per concept (a class, a
shape+colour, or for free-text sets such as clip art the normalised caption) and never the same caption
twice, so the contrastive loss never treats an image's own meaning (or its very caption) as a negative.
Checkpoints are written periodically and a rerun resumes from the last one.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spae.clip.embedded import (LITE_MEAN, LITE_STD, EmbeddedClipConfig, build_embedded_clip, text_prefix_states,
                                text_suffix, tokenizer_for)
from spae.clip.handle import ClipHandle
from spae.console import progress_enabled

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """One pretraining source: images [N,3,H,W] in [0,1] come in chunks via `image_batches`."""
    name: str
    image_batches: object  # callable(batch_size) -> iterator of [b,3,H,W] tensors in [0,1], N rows in all
    pools: list[list[str]]  # captions each image may be trained with
    concepts: list[str]  # what each image shows (for batch composition)
    notes: dict | None = None  # what building it dropped or filtered (reported by the clip stage)


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 32
    lr_head: float = 1e-3
    lr_backbone: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    checkpoint_every: int = 250
    seed: int = 0
    mix: str = "sqrt"  # how pretraining sets share a batch: proportional | sqrt | balanced (in their sizes)

    @classmethod
    def from_dict(cls, spec: dict) -> "TrainConfig":
        return cls(**{k: spec[k] for k in cls.__dataclass_fields__ if k in spec and spec[k] is not None})


@dataclass
class CachedPairs:
    image_prefix: torch.Tensor  # [N, C, h, w]
    caption_states: torch.Tensor  # [M, T, D]
    caption_mask: torch.Tensor  # [M, T]
    pools: list[np.ndarray]  # caption indices per image
    concepts: np.ndarray  # concept id per image
    captions: list[str]
    set_ids: np.ndarray | None = None  # pretraining set per image (None: one set)


def prefix_features(model, sets: Sequence[TrainingSet], image_size: int, chunk: int = 256) -> torch.Tensor:
    """The frozen EfficientNet prefix of every image, computed once (eval mode, no grad)."""
    handle = ClipHandle(model=model, tokenizer=None, image_size=image_size, mean=LITE_MEAN, std=LITE_STD,
                        identity="training")
    visual = model.visual.eval()
    total = sum(len(s.pools) for s in sets)
    out = []
    with torch.no_grad(), tqdm(total=total, desc="clip: image features", unit="img",
                                      disable=not progress_enabled()) as bar:
        for s in sets:
            for images in s.image_batches(chunk):
                out.append(visual.forward_prefix(handle.preprocess(images)))
                bar.update(len(images))
    feats = torch.cat(out)
    if len(feats) != total:
        raise ValueError(f"got {len(feats)} images for {total} caption pools")
    return feats


def cache_pairs(model, cfg: EmbeddedClipConfig, sets: Sequence[TrainingSet]) -> CachedPairs:
    captions = list(dict.fromkeys(c for s in sets for pool in s.pools for c in pool))
    if not captions:
        raise ValueError("no captions to train the embedded CLIP on: every pretraining image needs a caption "
                         "or a label name")
    index = {c: i for i, c in enumerate(captions)}
    tokens = tokenizer_for(cfg)(captions)
    mask = (tokens != model.text.config.pad_token_id).long()
    length = int(mask.sum(1).max())  # drop all-padding columns: shorter sequences, same result
    tokens, mask = tokens[:, :length], mask[:, :length]
    log.info("clip: %d distinct captions, up to %d tokens", len(captions), length)
    start = time.perf_counter()
    states = text_prefix_states(model.eval(), tokens, cfg.unlocked_text_layers)
    log.info("clip: caption prefix states in %.1fs", time.perf_counter() - start)
    concept_names = [c for s in sets for c in s.concepts]
    concept_ids = {c: i for i, c in enumerate(dict.fromkeys(concept_names))}
    return CachedPairs(
        image_prefix=prefix_features(model, sets, cfg.image_size),
        caption_states=states, caption_mask=mask,
        pools=[np.array([index[c] for c in pool]) for s in sets for pool in s.pools],
        concepts=np.array([concept_ids[c] for c in concept_names]), captions=captions,
        set_ids=np.concatenate([np.full(len(s.pools), k) for k, s in enumerate(sets)]))


CLIP_MIXES = ("proportional", "balanced", "sqrt")


def set_shares(sizes: Sequence[int], mix: str) -> np.ndarray:
    """Probability that a batch slot is drawn from each pretraining set: proportional to its size, equal
    (balanced), or proportional to sqrt(size), the temperature sampling of multilingual LMs (alpha = 0.5)
    between the two: a small set is seen more often without the large one losing most of the stream."""
    if mix not in CLIP_MIXES:
        raise ValueError(f"clip.train.mix={mix!r}; valid: {', '.join(CLIP_MIXES)}")
    exponent = {"proportional": 1.0, "balanced": 0.0, "sqrt": 0.5}[mix]
    weights = np.array([float(n) ** exponent for n in sizes])
    return weights / weights.sum()


class StepBatches(torch.utils.data.Dataset):
    """Item i is step i's batch (image ids, caption ids), drawn from a generator seeded by (seed, i): the
    same steps after a resume. Slots go to the pretraining sets by `mix`; a drawn image whose concept is
    already in the batch, or whose drawn caption is, is redrawn. When the data has fewer concepts than the
    batch has slots, concepts repeat (never captions); a batch is shorter only when there are too few
    distinct captions to fill it."""

    def __init__(self, pairs: CachedPairs, steps: int, batch_size: int, seed: int, start: int = 0,
                 mix: str = "sqrt"):
        self.pairs, self.steps, self.batch_size, self.seed, self.start = pairs, steps, batch_size, seed, start
        set_ids = pairs.set_ids if pairs.set_ids is not None else np.zeros(len(pairs.pools), dtype=int)
        self.by_set = [np.flatnonzero(set_ids == k) for k in range(int(set_ids.max()) + 1)]
        self.by_set = [members for members in self.by_set if len(members)]
        self.shares = set_shares([len(m) for m in self.by_set], mix)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def _fill(self, rng, images: list, captions: list, concepts: set, distinct_concepts: bool) -> None:
        used_captions = set(captions)
        for _ in range(self.batch_size * 20):  # bounded: tiny data may not fill the batch
            if len(images) == self.batch_size:
                return
            members = self.by_set[rng.choice(len(self.by_set), p=self.shares)]
            image = int(members[rng.integers(len(members))])
            concept = int(self.pairs.concepts[image])
            caption = int(rng.choice(self.pairs.pools[image]))
            if (distinct_concepts and concept in concepts) or caption in used_captions:
                continue
            images.append(image), captions.append(caption), concepts.add(concept), used_captions.add(caption)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.start + index  # after a resume, continue with the steps not yet taken
        rng = np.random.default_rng([self.seed, step])
        images: list[int] = []
        captions: list[int] = []
        concepts: set[int] = set()
        self._fill(rng, images, captions, concepts, distinct_concepts=True)
        self._fill(rng, images, captions, concepts, distinct_concepts=False)  # only when concepts ran out
        return torch.tensor(images), torch.tensor(captions)


def make_module(model, cfg: EmbeddedClipConfig, train: TrainConfig, pairs: CachedPairs):
    import pytorch_lightning as pl
    from open_clip import ClipLoss

    class EmbeddedClipModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.loss = ClipLoss()
            # Cached features are inputs, not state: kept out of the module's state dict and checkpoints.
            self._pairs = pairs

        def training_step(self, batch, _):
            images, captions = batch
            p = self._pairs
            image_emb = F.normalize(self.model.visual.forward_suffix(p.image_prefix[images]), dim=-1)
            text_emb = F.normalize(text_suffix(self.model, p.caption_states[captions], p.caption_mask[captions],
                                               cfg.unlocked_text_layers), dim=-1)
            loss = self.loss(image_emb, text_emb, self.model.logit_scale.exp())
            with torch.no_grad():
                acc = ((image_emb @ text_emb.T).argmax(1) == torch.arange(len(images))).float().mean()
            self.log_dict({"clip/loss": loss, "clip/batch_acc": acc, "clip/logit_scale":
                           self.model.logit_scale.exp()}, prog_bar=True, on_step=True)
            return loss

        def on_train_batch_end(self, *args):
            with torch.no_grad():  # CLIP's clamp: temperature no lower than 1/100
                self.model.logit_scale.clamp_(0, math.log(100))

        def configure_optimizers(self):
            heads, backbone = [], []
            for name, p in self.model.named_parameters():
                if p.requires_grad:
                    is_head = name.startswith(("visual.proj", "text.proj", "logit_scale", "visual.net._conv_head",
                                               "visual.net._bn1"))
                    (heads if is_head else backbone).append(p)
            opt = torch.optim.AdamW([{"params": heads, "lr": train.lr_head},
                                     {"params": backbone, "lr": train.lr_backbone}],
                                    weight_decay=train.weight_decay)
            warm = max(1, train.warmup_steps)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / train.steps))))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return EmbeddedClipModule()


def train_embedded_clip(sets: Sequence[TrainingSet], cfg: EmbeddedClipConfig, train: TrainConfig,
                        work_dir: Path, lightning_logger=False):
    """Train (or resume training) the embedded CLIP; returns (model, stats). Checkpoints in work_dir/ckpt."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    pl.seed_everything(train.seed, workers=True, verbose=False)
    model = build_embedded_clip(cfg, pretrained=True)
    start = time.perf_counter()
    pairs = cache_pairs(model, cfg, sets)
    cache_seconds = time.perf_counter() - start
    module = make_module(model, cfg, train, pairs)
    ckpt_dir = Path(work_dir) / "ckpt"
    last = ckpt_dir / "last.ckpt"
    done_steps = int(torch.load(last, weights_only=True, mmap=True)["global_step"]) if last.is_file() else 0
    loader = torch.utils.data.DataLoader(StepBatches(pairs, train.steps, train.batch_size, train.seed, done_steps,
                                                     train.mix),
                                         batch_size=None, shuffle=False, num_workers=0)
    checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0,
                                 every_n_train_steps=train.checkpoint_every, save_weights_only=False)
    trainer = pl.Trainer(max_steps=train.steps, max_epochs=-1, accelerator="cpu", devices=1,
                         logger=lightning_logger, callbacks=[checkpoint], enable_model_summary=False,
                         log_every_n_steps=25, num_sanity_val_steps=0, deterministic=False)
    resumed = last.is_file()
    if resumed:
        log.info("clip: resuming training from %s", last)
    start = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=str(last) if resumed else None, weights_only=True if resumed else None)
    stats = {"cache_seconds": round(cache_seconds, 2), "train_seconds": round(time.perf_counter() - start, 2),
             "steps": train.steps, "resumed": resumed, "resumed_at_step": done_steps,
             "final_step": int(trainer.global_step), "images": int(len(pairs.pools)),
             "distinct_captions": len(pairs.captions), "concepts": int(pairs.concepts.max()) + 1,
             "final_loss": float(trainer.callback_metrics.get("clip/loss", float("nan")))}
    return model.eval(), stats


def held_out_name_words(names: Sequence[str]) -> set[str]:
    """Words naming held-out classes, with plurals ("sneaker" -> sneaker, sneakers)."""
    from spae.clip.captions import words_in

    found = words_in(names) - {"a", "an", "the"}
    return found | {w + "s" for w in found}


def image_pools(label_names: list[str], captions: list[list[str]], sources: list[str], enrich: bool,
                forbidden: set[str]) -> tuple[list[list[str]], int]:
    """Each image's caption pool, and how many captions were dropped for naming a held-out class beside a
    labelled image (a seen Fashion-MNIST image must never be paired with a held-out class name)."""
    from spae.clip.captions import caption_pool, words_in

    pools, dropped = [], 0
    for label, refs, source in zip(label_names, captions, sources):
        # templated captions (class names, easy-VQA shapes) are enriched; free text (clip art) is kept as is
        pool = caption_pool(label or "", refs[0] if refs else "", enrich=enrich and source != "real")
        pool = list(dict.fromkeys(pool + list(refs[1:])))
        if label and forbidden:
            kept = [c for c in pool if not words_in([c]) & forbidden]
            dropped, pool = dropped + len(pool) - len(kept), kept
        pools.append(pool)
    return pools, dropped


def training_set_from_dataset(name: str, ds, enrich: bool = True, limit: int | None = None,
                              seed: int = 0, held_out_classes: Sequence[str] = ()) -> TrainingSet:
    """A pretraining Dataset (spae.data schema: image, label_name, caption, captions) as a TrainingSet.

    Every reference caption of an image joins its pool. With `limit`, a seeded random subset of that many
    rows is used (the CPU budget). `held_out_classes`: names that must never caption a labelled image."""
    from spae.clip.captions import check_no_held_out
    from spae.data.images import to_tensor

    if limit is not None and len(ds) > limit:
        ds = ds.shuffle(seed=seed).select(range(limit))
    meta = ds.select_columns(["label_name", "caption", "captions", "caption_source"])
    label_names = meta["label_name"]
    refs = [list(dict.fromkeys(([c] if c else []) + list(cs or []))) for c, cs in zip(meta["caption"], meta["captions"])]
    pools, dropped = image_pools(label_names, refs, meta["caption_source"], enrich,
                                 held_out_name_words(held_out_classes))
    for pool, caption in zip(pools, meta["caption"]):
        if not pool:
            raise ValueError(f"pretraining set {name!r} has an image with neither caption nor label name "
                             f"(caption {caption!r}); the embedded CLIP cannot train on it")
    # the words we wrote (templates, synonyms) stay clear of the relevance score's held-out related words;
    # free text of the broad world (clip art, stamps) may name them, as a web CLIP's captions would
    check_no_held_out({c for pool, source in zip(pools, meta["caption_source"]) if source != "real" for c in pool})
    # a concept: the class, else the caption (normalised): two drawings titled "apple" never share a batch
    concepts = [f"{name}:{label or ' '.join(pool[0].lower().split())}" for label, pool in zip(label_names, pools)]

    def image_batches(batch_size: int):
        images = ds.select_columns(["image"])
        for start in range(0, len(images), batch_size):
            rows = images[start:start + batch_size]["image"]
            yield to_tensor(rows, size=max(r.width for r in rows), channels=3)

    return TrainingSet(name=name, image_batches=image_batches, pools=pools, concepts=concepts,
                       notes={"images": len(pools), "held_out_name_captions_dropped": dropped})
