"""Typed tokenizer config: the one place where the library's defaults live.

The defaults below are exactly conf/model/embedded.yaml and conf/method/spae.yaml (tests/test_config_defaults.py
checks every value, and LQAE_PRESET against conf/method/lqae.yaml), so a tokenizer built from Python with
missing keys is the one the CLI trains. The library receives plain dicts (Hydra's resolved containers, saved
JSON) and converts them once with `TokenizerConfig.from_dict`: a missing key takes its default, an unknown
key fails and names the valid ones. Values are kept as given (no int()/float() here: the consumers validate
them, e.g. a pyramid side of 2.5 must fail, not become 2). The library knows nothing of Hydra.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from spae.errors import InvalidConfigError


class ConfigSection:
    """Mixin: build from a plain mapping (strict keys, nested sections) and back to a plain dict."""

    @classmethod
    def from_dict(cls, data: "Mapping | ConfigSection | None", where: str = ""):
        if isinstance(data, cls):
            return data
        if data is None:  # an absent or null section: all defaults
            return cls()
        where = where or cls.where
        if not isinstance(data, Mapping):
            raise InvalidConfigError(f"`{where or 'config'}` must be a mapping of keys to values, got {type(data).__name__} "
                                     f"{data!r}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InvalidConfigError(f"unknown key(s) {unknown} in `{where or 'config'}`; valid keys: "
                                     f"{', '.join(names)}")
        values = {}
        for key, value in data.items():
            section = hints[key]
            nested = isinstance(section, type) and issubclass(section, ConfigSection)
            values[key] = section.from_dict(value, f"{where}.{key}" if where else key) if nested else value
        return cls(**values)

    def to_dict(self) -> dict:
        """A plain, JSON-able dict of every value (lists, not tuples)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class ModelConfig(ConfigSection):
    """Encoder/decoder sizes and the pyramid's layer sides (conf/model/*.yaml; defaults: embedded.yaml)."""

    where = "model"
    name: str = "embedded"
    image_size: int = 32
    latent_size: int = 8
    channels: list = field(default_factory=lambda: [32, 64, 128])  # one entry per resolution level
    res_blocks: int = 1
    attention: bool = False
    groups: int = 8
    layers: list = field(default_factory=lambda: [1, 2, 4, 8, 8])  # semantic pyramid side lengths
    in_channels: int = 3  # RGB; no YAML sets it


@dataclass
class SearchConfig(ConfigSection):
    """method.search: the nearest-word search (spae.quantizers.SearchOptions validates it)."""

    where = "method.search"
    precision: str = "auto"  # fp32 | bf16_rerank | auto
    shortlist: int = 32


@dataclass
class SemanticConfig(ConfigSection):
    """method.semantic: CLIP-guided semantic loss on the upper layers."""

    where = "method.semantic"
    thresholds: list = field(default_factory=lambda: [0.95, 0.9, 0.85, 0.8, 0.75, 0.75])  # rho_l per layer
    temperature: float = 0.1
    temperature_relative: bool = True  # temperature is a fraction of the codebook's mean squared row norm
    layers: list = field(default_factory=lambda: [1, 2])
    num_negatives: Optional[int] = 512  # None: softmax over the whole codebook
    target: str = "sample"  # sample | all
    distinct_targets: bool = False  # sample: an image's queries of a layer draw distinct targets when they can
    weight: float = 1.0
    schedule: str = "linear_warmup"  # constant | linear_warmup | cosine_decay
    warmup_steps: int = 50
    final_weight: float = 0.1
    total_steps: Optional[int] = None  # for cosine_decay (set by the train stage, not in the YAML)


@dataclass
class GanConfig(ConfigSection):
    """method.loss.gan: PatchGAN discriminator and its loss."""

    where = "method.loss.gan"
    kind: str = "hinge"  # hinge | non_saturating
    weight: float = 0.1  # 0 disables the GAN
    start_step: int = 100000
    adaptive: bool = True
    lecam_weight: float = 0.001
    lecam_decay: float = 0.99
    channels: int = 32
    layers: int = 2


@dataclass
class LossConfig(ConfigSection):
    """method.loss: appearance losses."""

    where = "method.loss"
    recon: str = "l2"  # l2 | l1
    prefix_recon: str = "stratified"  # stratified | all | random | none
    prefix_weight: float = 1.0
    ssim_weight: float = 2.0
    perceptual: Optional[str] = "efficientnet_lite0"  # efficientnet_lite0 | lpips_vgg | lpips_alex | none
    perceptual_weight: float = 0.1
    perceptual_min_size: int = 32
    gan: GanConfig = field(default_factory=GanConfig)


@dataclass
class OptimConfig(ConfigSection):
    """method.optim: Adam for generator and discriminator, warmup then a schedule."""

    where = "method.optim"
    lr: float = 0.001
    disc_lr: float = 0.0002
    betas: list = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    warmup_steps: int = 20
    schedule: str = "cosine"  # constant | cosine (over total_steps)
    min_lr_factor: float = 0.1
    grad_clip: Optional[float] = 1.0  # None or 0: no clipping
    total_steps: Optional[int] = None  # for the cosine schedule (the train stage sets trainer.max_steps)


@dataclass
class MethodConfig(ConfigSection):
    """The tokenizer method (conf/method/spae.yaml; LQAE = these with LQAE_PRESET)."""

    where = "method"
    name: str = "spae"
    kind: str = "tokenizer"
    quantizer: str = "saq"  # saq | rq | vq
    single_layer: bool = False  # one full-grid layer (LQAE)
    beta: float = 0.005  # commitment weight
    pooling: str = "mean"  # mean | subsample
    latent_norm: str = "codebook"  # codebook | none
    pretrain_mix: str = "proportional"  # proportional | balanced (read by the train stage)
    search: SearchConfig = field(default_factory=SearchConfig)
    semantic_loss: bool = True
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


# Options removed after they measured no gain (git history keeps them). They shaped training only, not the
# weights' layout, so a tokenizer saved with one still loads (`without_retired_keys`); a new config with one fails.
RETIRED_KEYS = (("method", "loss", "prefix_order_weight"),)


def without_retired_keys(config: dict) -> dict:
    """A saved tokenizer config (tokenizer.json) without the keys of removed options."""
    config = copy.deepcopy(config)
    for *parents, leaf in RETIRED_KEYS:
        node = config
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config


# conf/method/lqae.yaml: spae.yaml with these keys changed
LQAE_PRESET = {"name": "lqae", "quantizer": "vq", "single_layer": True, "semantic_loss": False}


@dataclass
class TokenizerConfig(ConfigSection):
    """What SPAETokenizer is built from (and saves as its hyper-parameters)."""

    where = ""  # top level: its sections are `model` and `method`
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    seed: int = 0
    offline: bool = True


@dataclass
class TrainerConfig(ConfigSection):
    """Lightning Trainer settings and the training loop's sizes (conf/trainer/*.yaml; defaults: cpu.yaml).
    spae.training.build_trainer reads the Trainer's part; the train stages read the sizes."""

    where = "trainer"
    accelerator: str = "cpu"
    devices: Any = 1  # an int, -1 (all) or a list of device ids, as Lightning takes it
    num_nodes: int = 1  # not in cpu.yaml
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 300  # training batches
    max_time_s: Optional[float] = None  # optional wall-time cap: a binding cap pauses the stage
    batch_size: int = 16  # per device
    num_workers: int = 0
    checkpoint_every_n_steps: int = 50
    log_every_n_steps: int = 10
    progress_bar: bool = True
    progress_refresh: int = 5  # TQDM refresh rate in steps; not in the YAMLs
    # pretraining images a compared method reads relative to the tokenizers (Frozen's steps derive from it)
    images_seen_ratio: dict = field(default_factory=lambda: {"frozen": 0.5})
