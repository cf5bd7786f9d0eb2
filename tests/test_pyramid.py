"""Semantic pyramid geometry: token counts, dilation-subsampled positions, cell cover, pooling."""
import numpy as np
import pytest
import torch

from spae.pyramid import Pyramid

PAPER = ([1, 2, 4, 8, 16, 16], 16, [1, 5, 21, 85, 341, 597])
EMBEDDED = ([1, 2, 4, 8, 8], 8, [1, 5, 21, 85, 149])


@pytest.mark.parametrize("sides,latent,cumulative", [PAPER, EMBEDDED])
def test_token_counts_of_presets(sides, latent, cumulative):
    p = Pyramid(sides, latent)
    assert p.num_layers == len(sides)
    assert p.token_counts == [s * s for s in sides]
    assert p.cumulative_tokens == cumulative


def test_full_pyramid_is_one_full_grid_layer():
    p = Pyramid.full(16)
    assert p.layer_sides == [16] and p.token_counts == [256]
    assert torch.equal(p.positions(0), torch.arange(256))
    assert torch.equal(p.cover(0), torch.arange(256))


@pytest.mark.parametrize("sides,latent,_", [PAPER, EMBEDDED])
def test_positions_unique_in_own_cell_and_evenly_spread(sides, latent, _):
    p = Pyramid(sides, latent)
    for layer, side in enumerate(sides):
        pos = p.positions(layer)
        assert pos.dtype == torch.long and pos.numel() == side * side
        assert pos.unique().numel() == pos.numel()
        assert pos.min() >= 0 and pos.max() < latent * latent
        # each token's position lies in the cell that token owns
        assert torch.equal(p.cover(layer)[pos], torch.arange(side * side))
        # evenly spread: constant stride of one cell between neighbouring positions in rows and columns
        rows, cols = pos // latent, pos % latent
        cell = latent // side
        if side > 1:
            grid_rows = rows.view(side, side)
            assert torch.all(grid_rows[1:] - grid_rows[:-1] == cell)
            assert torch.all(cols.view(side, side)[:, 1:] - cols.view(side, side)[:, :-1] == cell)
        # centre-ish of the cell
        assert torch.all(rows % cell == cell // 2) and torch.all(cols % cell == cell // 2)


def test_cover_tiles_the_grid_into_equal_square_cells():
    p = Pyramid([1, 2, 4], 8)
    cover = p.cover(1).view(8, 8)
    assert torch.equal(cover[:4, :4], torch.zeros(4, 4, dtype=torch.long))
    assert torch.equal(cover[:4, 4:], torch.ones(4, 4, dtype=torch.long))
    assert torch.equal(cover[4:, :4], torch.full((4, 4), 2))
    assert torch.equal(cover[4:, 4:], torch.full((4, 4), 3))
    assert torch.equal(torch.bincount(p.cover(2)), torch.full((16,), 4))
    assert torch.equal(p.cover(0), torch.zeros(64, dtype=torch.long))


def test_pool_and_broadcast_are_consistent():
    p = Pyramid([1, 2, 4, 8], 8)
    grid = torch.randn(3, 5, 8, 8)
    for layer in range(p.num_layers):
        pooled = p.pool(grid, layer, "mean")
        assert pooled.shape == (3, p.token_counts[layer], 5)
        # the mean over each cell, computed from cover() independently
        flat = grid.flatten(2)
        cover = p.cover(layer)
        for t in range(p.token_counts[layer]):
            torch.testing.assert_close(pooled[:, t], flat[:, :, cover == t].mean(-1))
        sub = p.pool(grid, layer, "subsample")
        torch.testing.assert_close(sub, flat[:, :, p.positions(layer)].transpose(1, 2))
        # broadcasting pooled tokens and pooling again returns them
        torch.testing.assert_close(p.pool(p.broadcast(pooled, layer), layer, "mean"), pooled)
    # the full-grid layer is the identity
    torch.testing.assert_close(p.broadcast(p.pool(grid, 3), 3), grid)


def test_accepts_numpy_and_omegaconf_ints():
    from omegaconf import OmegaConf

    assert Pyramid(OmegaConf.create([1, 2, 4]), np.int64(8)).layer_sides == [1, 2, 4]


@pytest.mark.parametrize(
    "sides,latent,match",
    [
        ([], 8, "empty"),
        ([0, 2], 8, "positive"),
        ([-1], 8, "positive"),
        ([1, 2.5], 8, "positive integer"),
        ([1, 16], 8, "exceeds latent_size"),
        ([1, 3], 8, "does not divide"),
        ([1, 4, 2], 8, "non-decreasing"),
        ([1], 0, "latent_size"),
        ([True], 8, "positive integer"),
    ],
)
def test_invalid_pyramids_raise_clear_errors(sides, latent, match):
    with pytest.raises(ValueError, match=match):
        Pyramid(sides, latent)


def test_bad_layer_index_and_grid_shape():
    p = Pyramid([1, 2], 4)
    with pytest.raises(IndexError, match="out of range"):
        p.positions(2)
    with pytest.raises(ValueError, match="latent grid"):
        p.pool(torch.zeros(1, 3, 5, 5), 0)
    with pytest.raises(ValueError, match="pooling mode"):
        p.pool(torch.zeros(1, 3, 4, 4), 0, "max")
