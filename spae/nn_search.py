"""Exact nearest-neighbour search of vectors against a large frozen codebook (an LLM vocabulary).

``nearest(queries [N, D], codebook [K, D]) -> (indices [N], sq_dist [N])``; with ``k > 1`` both are
``[N, k]`` (ascending distance), which callers can reuse (e.g. as hard negatives).

Why hand-written: ``torch.cdist`` materialises the full ``N x K`` distance matrix (0.8 GB for
4k x 50k) and computes ``||q||^2`` terms that cannot change the argmin; vector-quantize-pytorch is ~3x
slower on CPU for a frozen codebook (MEASUREMENTS.md). Here the search is one GEMM per block,
``||e||^2 - 2 q @ E.T`` fused in ``torch.addmm``, followed by a min over the block; memory is bounded by
one ``row_chunk x code_chunk`` block. ``||q||^2`` is added back only to the winning distances.

Always fp32 (under autocast too, and with full-precision fp32 matmuls even where a trainer enabled TF32
through ``torch.set_float32_matmul_precision``): reduced-precision distances collapse code usage. Runs
under ``no_grad``: the search picks indices, gradients go around it (straight-through) in the quantizers.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

DEFAULT_ROW_CHUNK = 4096
DEFAULT_CODE_CHUNK = 8192


def squared_norms(codebook: torch.Tensor) -> torch.Tensor:
    """``||e_k||^2`` in fp32, to precompute once for a frozen codebook."""
    c = codebook.float()
    return (c * c).sum(dim=1)


@contextmanager
def exact_fp32(device_type: str) -> Iterator[None]:
    """Autocast off and IEEE fp32 matmuls (no TF32 / bf16 internal downcast) inside the block.

    The matmul precision is process-global state: it is restored on exit, and nothing else should run
    matmuls concurrently in other threads of the same process meanwhile.
    """
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


@torch.no_grad()
def nearest(
    queries: torch.Tensor,
    codebook: torch.Tensor,
    *,
    k: int = 1,
    codebook_sq_norms: torch.Tensor | None = None,
    row_chunk: int = DEFAULT_ROW_CHUNK,
    code_chunk: int = DEFAULT_CODE_CHUNK,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Exact Euclidean nearest codebook rows of each query.

    Returns ``(indices, sq_dist)``: ``[N]`` each for ``k == 1`` (the same assignment as
    ``torch.cdist(q, E).argmin(1)`` up to fp32 rounding of near-ties), else ``[N, k]`` sorted by distance.
    ``codebook_sq_norms`` (from ``squared_norms``) avoids recomputing ``||e||^2`` on every call.
    """
    _check_inputs(queries, codebook, k, row_chunk, code_chunk)
    with exact_fp32(queries.device.type):
        q = queries.float()
        e = codebook.float()
        e_sq = squared_norms(e) if codebook_sq_norms is None else codebook_sq_norms.float()
        idx_parts, dist_parts = [], []
        for start in range(0, q.shape[0], row_chunk):
            q_block = q[start:start + row_chunk]
            best_val, best_idx = _search_rows(q_block, e, e_sq, k, code_chunk)
            q_sq = (q_block * q_block).sum(dim=1, keepdim=True)
            dist_parts.append((best_val + q_sq).clamp_min_(0.0))
            idx_parts.append(best_idx)
        indices = torch.cat(idx_parts) if idx_parts else q.new_zeros((0, k), dtype=torch.long)
        sq_dist = torch.cat(dist_parts) if dist_parts else q.new_zeros((0, k))
    if k == 1:
        return indices[:, 0], sq_dist[:, 0]
    return indices, sq_dist


def _search_rows(
    q: torch.Tensor, e: torch.Tensor, e_sq: torch.Tensor, k: int, code_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` of ``||e||^2 - 2 q.e`` over the codebook, one ``code_chunk`` block at a time."""
    best_val = best_idx = None
    for start in range(0, e.shape[0], code_chunk):
        stop = min(start + code_chunk, e.shape[0])
        scores = torch.addmm(e_sq[start:stop], q, e[start:stop].T, beta=1.0, alpha=-2.0)
        if k == 1:
            val, idx = scores.min(dim=1, keepdim=True)
        else:
            val, idx = scores.topk(min(k, stop - start), dim=1, largest=False)
        idx = idx + start
        if best_val is None:
            best_val, best_idx = val, idx
        elif k == 1:
            # strict '<' keeps the lower index on exact ties, as argmin over the full row would
            better = val < best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx, best_idx)
        else:
            merged_val = torch.cat([best_val, val], dim=1)
            merged_idx = torch.cat([best_idx, idx], dim=1)
            best_val, pos = merged_val.topk(min(k, merged_val.shape[1]), dim=1, largest=False)
            best_idx = merged_idx.gather(1, pos)
    return best_val, best_idx


def _check_inputs(queries: torch.Tensor, codebook: torch.Tensor, k: int, row_chunk: int, code_chunk: int) -> None:
    if queries.dim() != 2 or codebook.dim() != 2:
        raise ValueError(f"nearest() expects queries [N, D] and codebook [K, D], got {list(queries.shape)} "
                         f"and {list(codebook.shape)}.")
    if queries.shape[1] != codebook.shape[1]:
        raise ValueError(f"Query dim {queries.shape[1]} != codebook dim {codebook.shape[1]}: project the "
                         f"latent to the codebook's embedding dimension first.")
    if codebook.shape[0] == 0:
        raise ValueError("The codebook is empty.")
    if not 1 <= k <= codebook.shape[0]:
        raise ValueError(f"k={k} must be in 1..{codebook.shape[0]} (the codebook size).")
    if row_chunk < 1 or code_chunk < 1:
        raise ValueError(f"row_chunk and code_chunk must be positive, got {row_chunk}, {code_chunk}.")
