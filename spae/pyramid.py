"""The semantic pyramid: which latent positions each token layer covers.

A latent grid of ``latent_size x latent_size`` positions is tokenised by ``L`` layers. Layer ``l`` has
``s_l x s_l`` tokens (``s_l`` = ``layer_sides[l]``, non-decreasing). The grid is cut into ``s_l x s_l``
equal square *cells* of ``c_l = latent_size // s_l`` positions per side; token ``t = row * s_l + col``
(row-major) owns cell ``(row, col)``.

* ``positions(l)``: the *dilation subsampler*. One position per cell, spread evenly with stride
  ``c_l``: the centre-ish position ``(row * c_l + c_l // 2, col * c_l + c_l // 2)`` as a flat index
  into the row-major ``H x W`` grid. Used where a token needs one place on the grid (the ``"subsample"``
  pooling of the quantizers, drawing the words of a layer over the image).
* ``cover(l)``: for every grid position, the layer-``l`` token whose cell holds it. A token's code is
  broadcast over its whole cell with it (``tokens[:, cover(l)]``).

Cells must tile the grid exactly, so every side must divide ``latent_size``: unequal cells would make a
coarse token weigh some positions more than others. Paper preset: sides 1, 2, 4, 8, 16, 16 on a 16 x 16
latent (cumulative tokens 1, 5, 21, 85, 341, 597); embedded preset: 1, 2, 4, 8, 8 on 8 x 8; LQAE: one
full-grid layer (``Pyramid.full``).

Pooling helpers turn a per-position map ``[B, D, H, W]`` into per-token vectors ``[B, n_l, D]`` and back.
"""
from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from numbers import Real

import torch
import torch.nn.functional as F

from spae.errors import InvalidConfigError

POOLING_MODES = ("mean", "subsample")


class Pyramid:
    """Layer geometry of a semantic pyramid over a square latent grid (pure index arithmetic)."""

    def __init__(self, layer_sides: Sequence[int], latent_size: int, *, sides_key: str = "layer_sides",
                 latent_key: str = "latent_size"):
        """`sides_key` / `latent_key`: what the caller calls these values (e.g. its config keys), so that an
        error names the setting the user wrote."""
        self.latent_size = _validated_latent(latent_size, latent_key)
        self.layer_sides = _validated_sides(layer_sides, self.latent_size, sides_key, latent_key)
        self._device_indices: dict[tuple[str, int, torch.device], torch.Tensor] = {}

    @classmethod
    def full(cls, latent_size: int) -> "Pyramid":
        """One full-grid layer (LQAE: every latent position is its own token)."""
        return cls([latent_size], latent_size)

    # ----------------------------------------------------------------------------------------- sizes
    @property
    def num_layers(self) -> int:
        return len(self.layer_sides)

    @property
    def num_positions(self) -> int:
        return self.latent_size * self.latent_size

    @property
    def token_counts(self) -> list[int]:
        """Tokens per layer, ``s_l ** 2``."""
        return [s * s for s in self.layer_sides]

    @property
    def cumulative_tokens(self) -> list[int]:
        """Tokens in each prefix of layers 1..l (paper preset: 1, 5, 21, 85, 341, 597)."""
        out, total = [], 0
        for n in self.token_counts:
            total += n
            out.append(total)
        return out

    def cell_size(self, layer: int) -> int:
        """Side, in latent positions, of the square cell one layer-``layer`` token covers (0-based)."""
        return self.latent_size // self.layer_sides[self._check_layer(layer)]

    # ----------------------------------------------------------------------------------------- indices
    def positions(self, layer: int) -> torch.LongTensor:
        """Flat grid index of the dilation-subsampled position of each token of ``layer`` (0-based)."""
        side, cell = self.layer_sides[self._check_layer(layer)], self.cell_size(layer)
        rc = torch.arange(side) * cell + cell // 2
        return (rc[:, None] * self.latent_size + rc[None, :]).reshape(-1)

    def cover(self, layer: int) -> torch.LongTensor:
        """For each of the ``H*W`` grid positions (row-major), the index of its layer-``layer`` token."""
        side, cell = self.layer_sides[self._check_layer(layer)], self.cell_size(layer)
        token_rc = torch.arange(self.latent_size) // cell
        return (token_rc[:, None] * side + token_rc[None, :]).reshape(-1)

    # ----------------------------------------------------------------------------------------- pooling
    def pool(self, grid: torch.Tensor, layer: int, mode: str = "mean") -> torch.Tensor:
        """``[B, D, H, W]`` -> ``[B, n_l, D]``: per-token vectors of ``layer``.

        ``"mean"`` averages each cell; ``"subsample"`` reads the dilation-subsampled position.
        """
        self._check_grid(grid)
        if mode == "mean":
            pooled = F.avg_pool2d(grid, self.cell_size(layer))  # [B, D, s, s], row-major like cover()
            return pooled.flatten(2).transpose(1, 2)
        if mode == "subsample":
            flat = grid.flatten(2)  # [B, D, H*W]
            return flat[:, :, self._on_device("positions", layer, grid.device)].transpose(1, 2)
        raise ValueError(f"Unknown pooling mode {mode!r}; choose one of {POOLING_MODES}.")

    def broadcast(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """``[B, n_l, D]`` -> ``[B, D, H, W]``: each token's vector painted over its whole cell."""
        n = self.token_counts[self._check_layer(layer)]
        if tokens.dim() != 3 or tokens.shape[1] != n:
            raise ValueError(f"Layer {layer} expects tokens [B, {n}, D], got {list(tokens.shape)}.")
        grid = tokens[:, self._on_device("cover", layer, tokens.device)]  # [B, H*W, D]
        return grid.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], self.latent_size, self.latent_size)

    def _on_device(self, kind: str, layer: int, device: torch.device) -> torch.Tensor:
        """positions()/cover() cached per device: avoids a host-to-device copy per layer per step."""
        key = (kind, layer, device)
        if key not in self._device_indices:
            self._device_indices[key] = getattr(self, kind)(layer).to(device)
        return self._device_indices[key]

    # ----------------------------------------------------------------------------------------- checks
    def _check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"Layer index {layer} out of range: this pyramid has layers 0..{self.num_layers - 1}.")
        return layer

    def _check_grid(self, grid: torch.Tensor) -> None:
        if grid.dim() != 4 or grid.shape[-2:] != (self.latent_size, self.latent_size):
            raise ValueError(
                f"Expected a latent grid [B, D, {self.latent_size}, {self.latent_size}], got {list(grid.shape)}."
            )

    def __repr__(self) -> str:
        return f"Pyramid(layer_sides={self.layer_sides}, latent_size={self.latent_size})"


def _as_int(value) -> int | None:
    """Ints of any flavour (numpy, OmegaConf); None for bools, floats (2.5 must not become 2) and strings."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _validated_latent(latent_size, latent_key: str) -> int:
    value = _as_int(latent_size)
    if value is None or value < 1:
        raise InvalidConfigError(f"{latent_key} must be a positive integer (the side of the latent grid, in "
                                 f"positions), got {latent_size!r}.")
    return value


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _validated_sides(layer_sides: Sequence[int], latent_size: int, sides_key: str = "layer_sides",
                     latent_key: str = "latent_size") -> list[int]:
    example = f"e.g. {sides_key}=[{','.join(str(d) for d in _divisors(latent_size))}]"
    given = _as_list(layer_sides)
    if given is None:
        raise InvalidConfigError(f"{sides_key} must be a list of layer sides (tokens per side of each pyramid "
                                 f"layer), got {layer_sides!r}; {example}.")
    if not given:
        raise InvalidConfigError(f"{sides_key} is empty: give at least one layer side, {example}.")
    sides = []
    for value in given:
        side = _as_int(value)
        if side is None or side < 1:
            raise InvalidConfigError(f"Every entry of {sides_key} must be a positive integer (tokens per side of "
                                     f"a pyramid layer), got {value!r} in {given}; {example}.")
        sides.append(side)
    divisors = _divisors(latent_size)
    for s in sides:
        if s > latent_size:
            raise InvalidConfigError(f"{sides_key} has a layer side {s} that exceeds "
                                     f"{_key_value(latent_key, latent_size)}: a layer cannot have more tokens per "
                                     f"side than the latent grid has positions; use sides among {divisors}.")
        if latent_size % s:
            raise InvalidConfigError(f"{sides_key} has a layer side {s} that does not divide "
                                     f"{_key_value(latent_key, latent_size)}, so its cells would be unequal; "
                                     f"use one of {divisors}.")
    if any(b < a for a, b in zip(sides, sides[1:])):
        raise InvalidConfigError(f"{sides_key} must be non-decreasing (coarse to fine), got {sides}.")
    return sides


def _as_list(values) -> list | None:
    """Any sequence or iterable of values (list, tuple, OmegaConf list, array) as a list; None for a string,
    a mapping or a scalar."""
    if isinstance(values, (str, bytes, Mapping)):
        return None
    try:
        return list(values)
    except TypeError:
        return None


def _key_value(latent_key: str, latent_size: int) -> str:
    return f"{latent_key}={latent_size}" if "." in latent_key else f"{latent_key} {latent_size}"


def check_thresholds(thresholds, num_layers: int | None = None, key: str = "thresholds") -> list[float]:
    """rho_l, one per pyramid layer, each in [0, 1] (CLIP relevance is min-max normalised). Fewer than
    `num_layers` values is allowed (layers without one get no semantic loss); extra values are ignored."""
    given = _as_list(thresholds)
    if not given:
        raise InvalidConfigError(f"{key} must be a non-empty list with one threshold in [0, 1] per pyramid layer, "
                                 f"got {thresholds!r}; e.g. {key}=[0.95,0.9,0.85].")
    values = given[: num_layers or None]
    bad = [t for t in values if isinstance(t, bool) or not isinstance(t, Real) or not 0.0 <= float(t) <= 1.0]
    if bad:
        raise InvalidConfigError(f"Every threshold in {key} must lie in [0, 1] (relevance is min-max normalised), "
                                 f"got {bad} in {given}; set each one between 0 and 1.")
    return [float(t) for t in values]
