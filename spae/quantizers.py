"""Pyramid quantizers over a frozen codebook: SAQ (SPAE), residual (RQ) and plain VQ (LQAE).

All three share one interface (``PyramidQuantizer``)::

    q = SAQuantizer(codebook [K, D], Pyramid([1, 2, 4, 8, 8], 8), beta=0.25)
    out = q(z [B, D, H, W], num_layers=None)      # -> QuantizerOutput
    z_hat = q.decode_codes(out.codes, num_layers=l)   # == out.z_q_prefix[l - 1] exactly

How a layer is quantized (the same for all three; only the *target* and the *latent* differ):

1. A per-position target map ``t_l [B, D, H, W]`` is formed from ``z`` and the codes chosen so far
   (``S_{l-1}`` = running sum over layers ``< l`` of each layer's code painted over its cell):

   * SAQ: ``t_l = l * z - S_{l-1}``, the closed form of the paper's ``z_l = z_{l-1} + (z - e_{l-1})``
     with ``z_1 = z``; if every code hit its target, the average of the codes would equal ``z``.
   * RQ: ``t_l = z - S_{l-1}`` (the residual).
   * VQ: ``t_l = z`` (every layer quantizes ``z`` independently).

2. The token of each cell is the **mean of the target over the cell** (``pooling="mean"``, default), the
   *layer query* ``q_l [B, n_l, D]``. Why the mean: the code is painted over the whole cell, and the
   nearest code to the cell mean is exactly the code minimising the summed squared error over the cell
   (``sum_p ||e - t(p)||^2 = c ||e - mean||^2 + const``), so every layer is the best single-word summary of
   its cell; the 1x1 top layer then summarises the whole image, which is what the semantic loss asks of
   it. ``pooling="subsample"`` instead reads the target at the dilation-subsampled position only (the
   encoder must then learn to put the cell's content there).

3. ``code_l = nearest(q_l)`` in fp32 over the frozen codebook; ``e_l`` (its row) is painted over the cell.

4. The quantized latent after prefix ``1..l`` (``z_q_prefix[l-1]``):

   * SAQ: ``S_l / l``, the average of the codes of layers ``1..l`` covering each position;
   * RQ: ``S_l``, their sum;
   * VQ: the finest layer so far alone (layer ``l``'s code over its cell).

Gradients: the codebook is a frozen buffer (no parameters, no codebook loss). Outputs are
straight-through, written ``hard + (z - z.detach())`` so that their *values* equal the decoded codes
bit-for-bit (``z + (hard - z).detach()`` would not) while ``d out / d z`` is the identity. ``layer_queries``
keep their graph to ``z`` (the semantic loss uses them).

Commitment loss (the same definition for all three): ``beta * mean_l mse(pool_l(z), sg(pool_l(z_q^{(l)})))``,
i.e. the encoder is pulled towards each prefix's quantized latent at that layer's resolution. It equals
``beta * mean_l mse(q_l, sg(e_l)) / w_l^2`` with ``w_l = l`` for SAQ and 1 for RQ/VQ; without the ``1/l^2``
SAQ's deeper layers (whose queries scale with ``l``) would dominate.

Precision: all search and accumulation run in fp32 with autocast disabled and TF32 matmuls off
(``nn_search.exact_fp32``), whatever the input dtype (bf16 distances collapse code usage); outputs are fp32.
``search={"precision": "bf16_rerank" | "auto", "shortlist": m}`` (``method.search`` in the configs) swaps in
the certified bf16-shortlist search of ``spae.nn_search``: the same codes as fp32 up to fp32 rounding of
near-ties; on a CPU with AVX512-BF16 the search takes 1.4-2.3x less time (benchmarks/perf/search_precision.py,
train_step.py).

Distinct words (``q(z, distinct=True)``, inference only): the positions of each layer of one image take
distinct words, greedily in raster order (``_distinct_codes``); the next layer's target follows the chosen codes.

Why the layers are searched one call at a time: SAQ's and RQ's layer ``l`` target depends on the codes of
layers ``< l``, so their queries cannot be batched into one search (VQ's could, but VQ is only LQAE's
single-layer baseline).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spae.errors import InvalidConfigError, InvalidInputError
from spae.nn_search import (DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK, DEFAULT_SHORTLIST, PRECISIONS, exact_fp32,
                             nearest, squared_norms)
from spae.pyramid import POOLING_MODES, Pyramid
from spae.registry import Registry

QUANTIZERS: Registry[type["PyramidQuantizer"]] = Registry("quantizer")


class NonFiniteLatentError(InvalidInputError):
    """NaN/Inf reached the quantizer (bad input pixels or a diverged encoder)."""


@dataclass
class QuantizerOutput:
    """What one forward pass of a ``PyramidQuantizer`` returns (``L`` = layers actually run)."""

    z_q: torch.Tensor  # [B, D, H, W] quantized latent of all L layers, straight-through to z
    z_q_prefix: list[torch.Tensor]  # L x [B, D, H, W] after layers 1..l, straight-through
    codes: list[torch.Tensor]  # L x LongTensor [B, n_l] codebook indices, row-major over the cells
    layer_queries: list[torch.Tensor]  # L x [B, n_l, D] vectors that were quantized, with grad to z
    commit_loss: torch.Tensor  # scalar, already beta-weighted
    unique_codes: list[int] = field(default_factory=list)  # distinct codes per layer in this batch
    search_stats: dict = field(default_factory=dict)  # rows searched, rows the bf16 certificate sent to fp32


@dataclass(frozen=True)
class SearchOptions:
    """How the nearest-code search runs (``method.search``): see ``spae.nn_search.nearest``."""

    precision: str = "fp32"  # fp32 | bf16_rerank | auto
    shortlist: int = DEFAULT_SHORTLIST  # codes per query re-ranked in fp32 (bf16_rerank / auto)

    @classmethod
    def from_config(cls, search: "dict | SearchOptions | None") -> "SearchOptions":
        if search is None:
            return cls()
        if isinstance(search, SearchOptions):
            return search
        unknown = sorted(set(search) - {"precision", "shortlist"})
        if unknown:
            raise InvalidConfigError(f"Unknown method.search key(s) {unknown}; valid: precision, shortlist.")
        options = cls(str(search.get("precision", cls.precision)), int(search.get("shortlist", cls.shortlist)))
        if options.precision not in PRECISIONS:
            raise InvalidConfigError(f"method.search.precision={options.precision!r}; choose one of {PRECISIONS}.")
        if options.shortlist < 1:
            raise InvalidConfigError(f"method.search.shortlist must be >= 1, got {options.shortlist}.")
        return options


class PyramidQuantizer(nn.Module):
    """Base class: layer loop, search, straight-through, commitment. Subclasses define target and latent."""

    name = "base"

    def __init__(
        self,
        codebook: torch.Tensor,
        pyramid: Pyramid,
        beta: float = 0.25,
        pooling: str = "mean",
        row_chunk: int = DEFAULT_ROW_CHUNK,
        code_chunk: int = DEFAULT_CODE_CHUNK,
        search: "dict | SearchOptions | None" = None,
    ):
        super().__init__()
        if codebook.dim() != 2 or codebook.shape[0] < 1:
            raise ValueError(f"codebook must be a non-empty [K, D] tensor, got {list(codebook.shape)}.")
        if not torch.isfinite(codebook).all():
            raise ValueError("codebook contains NaN or Inf values.")
        if not isinstance(pyramid, Pyramid):
            raise TypeError(f"pyramid must be a spae.pyramid.Pyramid, got {type(pyramid).__name__}.")
        if beta < 0:
            raise InvalidConfigError(f"beta (commitment weight) must be >= 0, got {beta}.")
        if pooling not in POOLING_MODES:
            raise InvalidConfigError(f"Unknown pooling {pooling!r}; choose one of {POOLING_MODES}.")
        self.pyramid = pyramid
        self.beta = float(beta)
        self.pooling = pooling
        self.row_chunk, self.code_chunk = int(row_chunk), int(code_chunk)
        self.search = SearchOptions.from_config(search)
        # Frozen and rebuilt from the codebook stage, so not saved in checkpoints (56 MB at 22k x 640).
        cb = codebook.detach().float().contiguous()
        self.register_buffer("codebook", cb, persistent=False)
        self.register_buffer("codebook_sq_norms", squared_norms(cb), persistent=False)
        self.register_buffer("codebook_bf16", cb.to(torch.bfloat16) if self.search.precision != "fp32" else None,
                             persistent=False)
        self.codebook_size, self.dim = (int(n) for n in cb.shape)  # the frozen codebook's [K, D]

    # --------------------------------------------------------------------------- per-method rules
    def target(self, z: torch.Tensor, code_sum: torch.Tensor, layer_number: int) -> torch.Tensor:
        """Per-position map quantized at layer ``layer_number`` (1-based), given the running code sum."""
        raise NotImplementedError

    def latent(self, code_sum: torch.Tensor, layer_code: torch.Tensor, layer_number: int) -> torch.Tensor:
        """Quantized latent after layers ``1..layer_number`` from the code sum and the newest layer's codes."""
        raise NotImplementedError

    # --------------------------------------------------------------------------- public API
    def forward(self, z: torch.Tensor, num_layers: int | None = None, distinct: bool = False) -> QuantizerOutput:
        """``distinct``: the positions of each layer of one image take distinct words (``_distinct_codes``);
        inference only (the encode path of the few-shot remedy), off by default."""
        num_layers = self._check_num_layers(num_layers)
        self._check_latent(z)
        with exact_fp32(z.device.type):
            zf = z.float()
            code_sum = torch.zeros_like(zf, requires_grad=False)
            prefixes, codes, queries, commits, unique, stats = [], [], [], [], [], {}
            for li in range(num_layers):
                layer_number = li + 1
                query = self.pyramid.pool(self.target(zf, code_sum, layer_number), li, self.pooling)
                if distinct and query.shape[1] > 1:
                    idx = self._distinct_codes(query.detach())
                else:
                    idx, _ = nearest(query.detach().reshape(-1, self.dim), self.codebook,
                                     codebook_sq_norms=self.codebook_sq_norms,
                                     row_chunk=self.row_chunk, code_chunk=self.code_chunk,
                                     precision=self.search.precision, shortlist=self.search.shortlist,
                                     codebook_bf16=self.codebook_bf16, stats=stats)
                    idx = idx.view(query.shape[0], query.shape[1])
                layer_code = self.pyramid.broadcast(self.codebook[idx], li)
                code_sum = code_sum + layer_code
                hard = self.latent(code_sum, layer_code, layer_number)
                prefixes.append(hard + (zf - zf.detach()))  # straight-through, values exactly `hard`
                codes.append(idx)
                queries.append(query)
                commits.append(self._commit(zf, hard, li))
                unique.append(int(torch.unique(idx).numel()))
            commit_loss = self.beta * torch.stack(commits).mean()
        return QuantizerOutput(z_q=prefixes[-1], z_q_prefix=prefixes, codes=codes, layer_queries=queries,
                               commit_loss=commit_loss, unique_codes=unique, search_stats=stats)

    @torch.no_grad()
    def decode_codes(self, codes: list[torch.Tensor], num_layers: int | None = None) -> torch.Tensor:
        """Quantized latent ``[B, D, H, W]`` after layers ``1..num_layers`` from codebook indices alone."""
        num_layers = self._check_num_layers(len(codes) if num_layers is None else num_layers)
        if len(codes) < num_layers:
            raise ValueError(f"decode_codes needs codes for {num_layers} layers, got {len(codes)}.")
        code_sum = hard = None
        for li in range(num_layers):
            idx = self._check_codes(codes[li], li)
            layer_code = self.pyramid.broadcast(self.codebook[idx], li)
            code_sum = layer_code if code_sum is None else code_sum + layer_code
            hard = self.latent(code_sum, layer_code, li + 1)
        return hard

    # --------------------------------------------------------------------------- helpers
    @torch.no_grad()
    def _distinct_codes(self, query: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, n]`` for queries ``[B, n, D]`` with no word repeated within an image: greedily, in raster
        order, each position takes its nearest word not taken by an earlier position of the same image.
        Position j has at most j taken words among its j+1 nearest, so the exact fp32 top-n always holds a free
        one. Why: a layer's positions often share their nearest word ("sand sand sand sand"), which tells an
        LLM nothing more than one "sand"."""
        B, n, _ = query.shape
        if n > self.codebook_size:
            raise InvalidInputError(f"distinct words need a codebook of at least {n} words (the positions of a "
                                    f"layer), this one has {self.codebook_size}.")
        ranked, _ = nearest(query.reshape(B * n, self.dim), self.codebook, k=n,
                            codebook_sq_norms=self.codebook_sq_norms, row_chunk=self.row_chunk,
                            code_chunk=self.code_chunk, precision="fp32")
        ranked = ranked.view(B, n, n)  # [image, position, candidate], nearest first
        chosen = torch.empty(B, n, dtype=torch.long, device=query.device)
        for j in range(n):
            taken = (ranked[:, j, :, None] == chosen[:, None, :j]).any(dim=2)  # [B, n candidates]
            first_free = (~taken).to(torch.int8).argmax(dim=1)  # argmax returns the first maximum
            chosen[:, j] = ranked[:, j].gather(1, first_free[:, None]).squeeze(1)
        return chosen

    def _commit(self, zf: torch.Tensor, hard: torch.Tensor, li: int) -> torch.Tensor:
        pooled_z = self.pyramid.pool(zf, li, self.pooling)
        pooled_q = self.pyramid.pool(hard, li, self.pooling)
        return torch.mean((pooled_z - pooled_q.detach()) ** 2)

    def _check_num_layers(self, num_layers: int | None) -> int:
        total = self.pyramid.num_layers
        if num_layers is None:
            return total
        if not 1 <= num_layers <= total:
            raise ValueError(f"num_layers={num_layers} must be in 1..{total} (layers of {self.pyramid}).")
        return int(num_layers)

    def _check_latent(self, z: torch.Tensor) -> None:
        size = self.pyramid.latent_size
        if z.dim() != 4 or z.shape[1] != self.dim or z.shape[2:] != (size, size):
            raise ValueError(f"Expected z of shape [B, {self.dim}, {size}, {size}] (codebook dim {self.dim}, "
                             f"latent {size}x{size}), got {list(z.shape)}.")
        if not z.is_floating_point():
            raise TypeError(f"z must be a floating-point tensor, got {z.dtype}.")
        # One reduction per step; without it a NaN would silently pick code 0 everywhere and train on.
        if not bool(torch.isfinite(z).all()):
            raise NonFiniteLatentError(
                "The encoder output z contains NaN or Inf values, so no codebook word can be chosen. Check the "
                "input batch for NaN/Inf pixels; if the inputs are finite, training diverged: lower the "
                "learning rate, enable gradient clipping, or resume from an earlier checkpoint.")

    def _check_codes(self, idx: torch.Tensor, li: int) -> torch.Tensor:
        n = self.pyramid.token_counts[li]
        if idx.dim() != 2 or idx.shape[1] != n or idx.dtype != torch.long:
            raise ValueError(f"Codes of layer {li + 1} must be a LongTensor [B, {n}], got "
                             f"{idx.dtype} {list(idx.shape)}.")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.codebook_size):
            raise ValueError(f"Codes of layer {li + 1} fall outside the codebook 0..{self.codebook_size - 1}.")
        return idx

    def extra_repr(self) -> str:
        return (f"codebook={self.codebook_size}x{self.dim}, pyramid={self.pyramid}, beta={self.beta}, "
                f"pooling={self.pooling!r}, search={self.search}")


@QUANTIZERS.register("saq")
class SAQuantizer(PyramidQuantizer):
    """Streaming average quantization (SPAE): the running average of the chosen codes approximates z."""

    name = "saq"

    def target(self, z, code_sum, layer_number):
        return layer_number * z - code_sum

    def latent(self, code_sum, layer_code, layer_number):
        return code_sum / layer_number



@QUANTIZERS.register("rq")
class ResidualQuantizer(PyramidQuantizer):
    """Residual quantization: each layer quantizes what the sum of the previous codes left over."""

    name = "rq"

    def target(self, z, code_sum, layer_number):
        return z - code_sum

    def latent(self, code_sum, layer_code, layer_number):
        return code_sum


@QUANTIZERS.register("vq")
class VectorQuantizer(PyramidQuantizer):
    """Plain VQ: every layer quantizes z on its own; the latent of a prefix is its finest (last) layer.

    With ``Pyramid.full(latent_size)`` this is LQAE's quantizer.
    """

    name = "vq"

    def target(self, z, code_sum, layer_number):
        return z

    def latent(self, code_sum, layer_code, layer_number):
        return layer_code


def build_quantizer(kind: str, codebook: torch.Tensor, pyramid: Pyramid, **kwargs) -> PyramidQuantizer:
    """Construct a quantizer by registry name (``"saq"``, ``"rq"``, ``"vq"``)."""
    return QUANTIZERS.get(kind)(codebook, pyramid, **kwargs)
