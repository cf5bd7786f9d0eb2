"""The SPAE tokenizer (and its LQAE variant) as a LightningModule, plus the public encode/decode API.

    tok = load_tokenizer(train_stage_dir, codebook)          # or SPAETokenizer(config, codebook)
    pyramid = tok.encode(images)                              # TokenPyramid: ids and words per layer
    images = tok.decode(pyramid, layers=2)                    # any prefix of layers -> pixels
    images = tok.decode([["dress"], ["gown", "robe", ...]])   # or words (unknown words fail clearly)

`config` is a plain, JSON-able dict: {"model": {...}, "method": {...}, "seed": int, "offline": bool}, see
`tokenizer_config`. It is converted once to spae.config.TokenizerConfig (missing keys take the defaults of
conf/model/embedded.yaml and conf/method/spae.yaml, unknown keys fail); the complete dict is saved as the
module's hyper-parameters (checkpoints load with weights_only=True). The frozen codebook is a non-persistent buffer: it is never saved, and is rebuilt
from the codebook stage when a tokenizer is loaded.

Training uses manual optimisation with two optimisers (generator = encoder + decoder, discriminator).
Both are stepped on every batch (the discriminator's step is a no-op before the GAN starts), so
Lightning's `global_step`, which counts optimiser steps, is exactly 2 x the number of batches; the
module's `iteration` is that batch count, and the train stage passes Trainer(max_steps=2 x steps).
The losses (reconstruction, SSIM, perceptual, commitment, semantic, GAN) are spae.objective's; the
optimisers and learning-rate schedule spae.optim's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from spae.config import MethodConfig, ModelConfig, TokenizerConfig, without_retired_keys
from spae.errors import InvalidConfigError
from spae.losses import GAN_LOSSES
from spae.networks import ArchSpec, Decoder, Encoder, count_parameters
from spae.objective import PREFIX_RECON_MODES, RelevanceFn, StepTimer, TokenizerObjective, TrainForward
from spae.optim import LR_SCHEDULES, generator_and_discriminator_optimizers
from spae.perceptual import describe_perceptual
from spae.pyramid import Pyramid
from spae.quantizers import build_quantizer

WEIGHTS_FILE = "tokenizer.safetensors"
CONFIG_FILE = "tokenizer.json"

# method.latent_norm (checked when the module is built, with the options of spae.objective and spae.optim:
# a bad value fails at once, not at the step that first reads it; tests/test_training_options.py trains each)
LATENT_NORMS = ("codebook", "none")


class UnknownWordError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class TokenPyramid:
    """Codebook ids per layer (LongTensor [B, n_l]) and the same tokens as words (per layer, per image)."""

    ids: list[torch.Tensor]
    words: list[list[list[str]]]  # [layer][image][token]

    @property
    def num_layers(self) -> int:
        return len(self.ids)

    def for_image(self, index: int, layers: int | None = None) -> list[list[str]]:
        """The words of one image, one list per layer."""
        return [layer[index] for layer in self.words[: layers or self.num_layers]]


def pyramid_for(model: "dict | ModelConfig", method: "dict | MethodConfig") -> Pyramid:
    """SPAE uses the model's layer sides; LQAE (method.single_layer) one full-grid layer. The values are
    validated as given (no int(): 2.5 must fail, not become 2); errors name the model config keys."""
    model, method = ModelConfig.from_dict(model), MethodConfig.from_dict(method)
    keys = {"sides_key": "model.layers", "latent_key": "model.latent_size"}
    if method.single_layer:
        return Pyramid([model.latent_size], model.latent_size, **keys)
    return Pyramid(model.layers, model.latent_size, **keys)


class SPAETokenizer(pl.LightningModule):
    optimizer_steps_per_batch = 2  # generator + discriminator: see the module docstring

    def __init__(self, config: dict, codebook_embeddings: torch.Tensor, words: Sequence[str] | None = None,
                 relevance_fn: RelevanceFn | None = None, with_perceptual: bool = True):
        super().__init__()
        self.automatic_optimization = False
        # converted once: missing keys take spae.config's defaults (= the YAML's), unknown keys fail
        self.settings = TokenizerConfig.from_dict(config)
        self.config = self.settings.to_dict()  # every value, as saved with the weights
        self.save_hyperparameters({"config": self.config})
        model, method = self.settings.model, self.settings.method
        check_enumerated_options(self.config["method"])
        if codebook_embeddings.dim() != 2:
            raise ValueError(f"codebook embeddings must be [K, D], got {list(codebook_embeddings.shape)}")
        if words is not None and len(words) != codebook_embeddings.shape[0]:
            raise ValueError(f"{len(words)} words for a codebook of {codebook_embeddings.shape[0]} rows")
        self.words = list(words) if words is not None else None
        self._word_index = {w: i for i, w in enumerate(self.words)} if self.words else {}

        self.spec = ArchSpec.from_config(model, latent_dim=codebook_embeddings.shape[1])
        self.pyramid = pyramid_for(model, method)
        self.encoder = Encoder(self.spec)
        shift, scale = latent_stats(codebook_embeddings, method.latent_norm)
        self.register_buffer("latent_shift", shift, persistent=False)  # derived from the codebook
        self.register_buffer("latent_scale", scale, persistent=False)
        # no learnable gain: shrinking it would pull every latent towards the codebook's centre, which
        # is nearest to the same few "hub" words (see latent_stats)
        self.latent_norm = (nn.LayerNorm(codebook_embeddings.shape[1], elementwise_affine=False)
                            if method.latent_norm == "codebook" else None)
        self.decoder = Decoder(self.spec)
        self.quantizer = build_quantizer(method.quantizer, codebook_embeddings, self.pyramid,
                                         beta=float(method.beta),
                                         pooling=method.pooling, search=method.search.to_dict())
        self.timer = StepTimer()  # wall time per part of the training step
        self.objective = TokenizerObjective(method, codebook_embeddings, self.pyramid, self.spec.in_channels,
                                            bool(self.settings.offline), with_perceptual, relevance_fn, self.timer)
        for name, module in self.objective.loss_modules().items():
            setattr(self, name, module)  # registered here: .to() moves them, checkpoints keep their keys

    # ------------------------------------------------------------------ sizes / description
    @property
    def iteration(self) -> int:
        """Training batches done (Lightning's global_step counts both optimisers' steps)."""
        return self.global_step // self.optimizer_steps_per_batch

    @property
    def step_seconds(self) -> dict[str, float]:
        return self.timer.seconds

    def describe(self) -> dict:
        return {
            "method": self.config["method"]["name"],
            "quantizer": self.config["method"]["quantizer"],
            "image_size": self.spec.image_size, "latent_size": self.spec.latent_size,
            "layer_sides": self.pyramid.layer_sides,
            "token_counts": self.pyramid.token_counts,
            "cumulative_tokens": self.pyramid.cumulative_tokens,
            "codebook_size": self.quantizer.codebook_size, "codebook_dim": self.quantizer.dim,
            "params_encoder": count_parameters(self.encoder),
            "params_decoder": count_parameters(self.decoder),
            "params_discriminator": count_parameters(self.discriminator),
            "perceptual": describe_perceptual(self.settings.method.loss.perceptual),
        }

    def set_relevance_fn(self, fn: RelevanceFn | None) -> None:
        self.objective.relevance_fn = fn

    # ------------------------------------------------------------------ checkpoints
    def _frozen_prefixes(self) -> tuple[str, ...]:
        return ("perceptual.",)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights worth saving: everything but the frozen perceptual backbone (and non-persistent codebook)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self._frozen_prefixes())}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith(self._frozen_prefixes())}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # put the frozen backbone's (package-loaded) weights back so strict loading still checks the rest
        checkpoint["state_dict"].update({k: v for k, v in self.state_dict().items()
                                         if k.startswith(self._frozen_prefixes())})

    # ------------------------------------------------------------------ public API
    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        s = self.spec.image_size
        if images.dim() != 4 or images.shape[1] != self.spec.in_channels or images.shape[2:] != (s, s):
            raise ValueError(f"images must be [B, {self.spec.in_channels}, {s}, {s}] in [0, 1] (this tokenizer's "
                             f"image_size), got {list(images.shape)}; resize with spae.data.images.to_tensor")
        return images.to(self.device, torch.float32)

    def _check_layers(self, layers: int | None) -> int:
        total = self.pyramid.num_layers
        if layers is None:
            return total
        if not 1 <= int(layers) <= total:
            raise ValueError(f"layers={layers} must be in 1..{total} (this tokenizer's pyramid has {total} layers)")
        return int(layers)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, layers: int | None = None, distinct: bool = False) -> TokenPyramid:
        """Images [B, 3, S, S] in [0, 1] -> the token pyramid (ids and words of layers 1..layers); `distinct`: no
        word repeated within a layer of an image (PyramidQuantizer.forward)."""
        layers = self._check_layers(layers)
        out = self.quantizer(self.encode_latent(self._check_images(images)), num_layers=layers, distinct=distinct)
        ids = [c.cpu() for c in out.codes]
        return TokenPyramid(ids=ids, words=[self.words_of(c) for c in ids])

    @torch.no_grad()
    def decode(self, tokens: "TokenPyramid | Sequence", layers: int | None = None) -> torch.Tensor:
        """A TokenPyramid, a list of id tensors per layer, or words -> images [B, 3, S, S] in [0, 1].

        Words: per layer, a list of words for one image (`[["dress"], ["a", "b", "c", "d"]]`) or a list of
        such lists, one per image. Only the first `layers` layers are used (default: all given)."""
        ids = self._ids_from(tokens)
        layers = self._check_layers(len(ids) if layers is None else layers)
        if layers > len(ids):
            raise ValueError(f"decode(layers={layers}) needs {layers} layers of tokens, got {len(ids)}")
        latent = self.quantizer.decode_codes([i.to(self.device) for i in ids[:layers]], layers)
        return self.decode_latent(latent).clamp(0.0, 1.0)

    @torch.no_grad()
    def forward_eval(self, images: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        """The module's own reconstruction from the first `layers` layers (equals decode(encode(x)))."""
        layers = self._check_layers(layers)
        out = self.quantizer(self.encode_latent(self._check_images(images)), num_layers=layers)
        return self.decode_latent(out.z_q).clamp(0.0, 1.0)

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder output placed in the codebook's region of the embedding space (see _latent_stats)."""
        z = self.encoder(images)
        if self.latent_norm is not None:  # unit variance over channels at every position
            z = self.latent_norm(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return z * self.latent_scale[:, None, None] + self.latent_shift[:, None, None]

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        # the decoder sees the latent standardised back; one memory layout for every path (conv kernels
        # differ in the last bits between layouts, and decode(encode(x)) must equal the eval forward)
        latent = (latent - self.latent_shift[:, None, None]) / self.latent_scale[:, None, None]
        return self.decoder(latent.contiguous())

    def words_of(self, ids: torch.Tensor) -> list[list[str]]:
        if self.words is None:
            raise ValueError("this tokenizer was built without codebook words; pass words= to use them")
        return [[self.words[i] for i in row] for row in ids.tolist()]

    def ids_of(self, words: Sequence[str]) -> torch.Tensor:
        if self.words is None:
            raise ValueError("this tokenizer was built without codebook words; pass words= to use them")
        missing = [w for w in words if w not in self._word_index]
        if missing:
            raise UnknownWordError(f"word(s) not in the codebook of {len(self.words)} words: "
                                   f"{sorted(set(missing))[:20]}; only codebook words can be decoded")
        return torch.tensor([self._word_index[w] for w in words], dtype=torch.long)

    def _ids_from(self, tokens) -> list[torch.Tensor]:
        if isinstance(tokens, TokenPyramid):
            return list(tokens.ids)
        tokens = list(tokens)
        if not tokens:
            raise ValueError("decode() got no layers of tokens")
        if all(isinstance(t, torch.Tensor) for t in tokens):
            return [t.long() for t in tokens]
        ids = []
        for li, layer in enumerate(tokens):
            per_image = [layer] if layer and isinstance(layer[0], str) else list(layer)
            n = self.pyramid.token_counts[li] if li < self.pyramid.num_layers else None
            for words in per_image:
                if n is not None and len(words) != n:
                    raise ValueError(f"layer {li + 1} takes {n} words per image, got {len(words)}: {list(words)}")
            ids.append(torch.stack([self.ids_of(list(w)) for w in per_image]))
        return ids

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        gen_params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        if self.latent_norm is not None:
            gen_params += list(self.latent_norm.parameters())
        return generator_and_discriminator_optimizers(gen_params, self.discriminator.parameters(),
                                                      self.settings.method.optim)

    def _step_generator(self) -> torch.Generator:
        # Randomness per step is a function of (seed, iteration): a resumed run draws the same samples.
        gen = torch.Generator()
        gen.manual_seed(int(self.settings.seed) * 1_000_003 + self.iteration)
        return gen

    def training_forward(self, images: torch.Tensor, gen: torch.Generator) -> TrainForward:
        """Encode, quantize, then one decoder pass over the full pyramid and the objective's planned prefixes."""
        with self.timer("encoder"):
            z = self.encode_latent(images)
        with self.timer("quantizer"):
            q = self.quantizer(z)
        plan = self.objective.prefix_plan(images.shape[0], gen)
        with self.timer("decoder"):
            recons = self.decode_latent(torch.cat([q.z_q] + [q.z_q_prefix[p - 1][idx] for p, idx in plan]))
        index = torch.cat([torch.arange(images.shape[0])] + [idx for _, idx in plan]).to(images.device)
        return TrainForward(quantized=q, recons=recons, target_index=index)

    def generator_losses(self, images: torch.Tensor, it: int, gen: torch.Generator) -> dict:
        return self.objective.generator_losses(self.training_forward(images, gen), images, it, gen,
                                               self.decoder.last_layer_weight)

    def training_step(self, batch, batch_idx):
        images = batch["image"] if isinstance(batch, dict) else batch
        it = self.iteration
        opt_g, opt_d = self.optimizers()
        losses = self.generator_losses(images, it, self._step_generator())

        opt_g.zero_grad(set_to_none=True)
        with self.timer("backward"):
            self.manual_backward(losses["total"])
        clip = self.settings.method.optim.grad_clip
        if clip:
            self.clip_gradients(opt_g, gradient_clip_val=float(clip), gradient_clip_algorithm="norm")
        opt_g.step()

        opt_d.zero_grad(set_to_none=True)
        if self.objective.gan_active(it):
            with self.timer("discriminator"):
                d_losses = self.objective.discriminator_losses(images, losses["recon_full"].detach())
                self.manual_backward(d_losses["total"])
            losses.update({f"disc/{k}": v for k, v in d_losses.items()})
        opt_d.step()  # no grads before the GAN starts -> no update, but keeps global_step = 2 x batches
        for scheduler in self.lr_schedulers():
            scheduler.step()
        self._log_train(losses)
        return None

    def _log_train(self, losses: dict) -> None:
        scalars = {}
        for k, v in losses.items():
            if k in ("recon_full", "total"):
                continue
            scalars[f"train/{k}"] = float(v) if not isinstance(v, torch.Tensor) else float(v.detach())
        scalars["train/loss"] = float(losses["total"].detach())
        scalars["train/lr"] = float(self.optimizers()[0].param_groups[0]["lr"])
        self.log_dict(scalars, on_step=True, prog_bar=False, batch_size=1)
        self.log("rec", scalars["train/rec"], prog_bar=True, on_step=True, batch_size=1)


def check_enumerated_options(method: dict) -> None:
    """Clear errors for values outside the accepted sets above (the quantizer, pooling, search, semantic
    and perceptual options are checked by the objects they build)."""
    loss, optim = method["loss"], method["optim"]  # a complete config (TokenizerConfig.to_dict)
    options = {"method.loss.prefix_recon": (loss["prefix_recon"], PREFIX_RECON_MODES),
               "method.optim.schedule": (optim["schedule"], LR_SCHEDULES),
               "method.latent_norm": (method["latent_norm"], LATENT_NORMS),
               "method.loss.gan.kind": (loss["gan"]["kind"], GAN_LOSSES)}
    for key, (value, valid) in options.items():
        if value not in valid:
            raise InvalidConfigError(f"{key}={value!r}; valid: {', '.join(valid)}")


def latent_stats(codebook: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension shift and scale mapping the encoder's ~unit-scale output onto the codebook's
    distribution ("codebook"), or identity ("none"). Why: an LLM codebook is far from the origin (Gemma's
    rows have norm ~26 and a shared mean direction of norm ~13), so a fresh encoder's small outputs all
    fall nearest to the same few words and the frozen-codebook quantizer collapses (LQAE used 2 words).
    The encoder output is layer-normalised over channels first (encode_latent): the search picks the code
    of largest dot product (rows have ~equal norms), so the encoder's part must outweigh the shared mean
    for the choice to depend on the image, which unit variance x the codebook's std gives (norm ~23 vs 13)."""
    cb = codebook.detach().float()
    if mode == "codebook":
        return cb.mean(0), cb.std(0).clamp_min(1e-6)
    if mode == "none":
        return torch.zeros(cb.shape[1]), torch.ones(cb.shape[1])
    raise ValueError(f"method.latent_norm={mode!r}; valid: {', '.join(LATENT_NORMS)}")


# ---------------------------------------------------------------------- saving / loading
def save_tokenizer(module: SPAETokenizer, directory: str | Path, extra: dict | None = None) -> Path:
    """Final weights (safetensors) + tokenizer.json (config, sizes), each written atomically."""
    from safetensors.torch import save_file

    from spae.io import atomic_path, write_json_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in module.trainable_state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(weights, str(tmp))
    write_json_atomic(directory / CONFIG_FILE, {"config": module.config, "describe": module.describe(),
                                                **(extra or {})})
    return directory


def load_tokenizer(directory: str | Path, codebook, relevance_fn: RelevanceFn | None = None,
                   device: str | torch.device = "cpu") -> SPAETokenizer:
    """A trained tokenizer from a train-stage folder and its codebook (spae.codebook.Codebook), in eval mode."""
    from safetensors.torch import load_file

    from spae.errors import CheckpointMismatchError

    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file() or not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no trained tokenizer in {directory} (needs {WEIGHTS_FILE} and {CONFIG_FILE}); "
                                "run the `train` stage first")
    meta = json.loads((directory / CONFIG_FILE).read_text())
    config = without_retired_keys(meta["config"])  # saved before an option was removed
    expected = meta.get("describe", {}).get("codebook_size")
    if expected is not None and expected != codebook.size:
        raise CheckpointMismatchError(f"the tokenizer in {directory} was trained on a codebook of {expected} words, "
                         f"this codebook has {codebook.size}: use the codebook stage output it was trained with")
    module = SPAETokenizer(config, codebook.embeddings, codebook.words, relevance_fn, with_perceptual=False)
    state = load_file(str(directory / WEIGHTS_FILE))
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(module._frozen_prefixes())]
    if missing or unexpected:
        raise CheckpointMismatchError(f"tokenizer weights in {directory} do not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return module.to(device).eval()
