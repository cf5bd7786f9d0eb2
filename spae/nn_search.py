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

``precision="bf16_rerank"`` (opt-in) makes the big GEMM 3-4x cheaper on CPUs with AVX512-BF16 (and on GPUs)
without giving up exactness: a bf16 GEMM shortlists the ``shortlist`` best codes of each query, their
exact fp32 scores are recomputed, and the answer is *certified*: with ``b`` a rigorous bound on the bf16
score error (``bf16_score_error_bound``), every code outside the shortlist has a true score
``>= tau - b`` (``tau`` = the worst approximate score kept), so when the best exact score in the shortlist
is ``< tau - b`` no outside code can beat it. Rows that fail the test are searched again in exact fp32.
Result: the same codes as ``precision="fp32"``, except where two codes' fp32 scores differ only by fp32
rounding (the re-rank sums in another order than the full GEMM; the same caveat as fp32 vs ``cdist``).
The bound assumes the bf16 GEMM accumulates in fp32 (oneDNN's AVX512-BF16 kernels and cuBLAS with
reduced-precision reductions off, which this module enforces); every call also checks the observed error
on the shortlisted codes against the bound and falls back to fp32 (with a warning) if it is violated.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch

DEFAULT_ROW_CHUNK = 4096
DEFAULT_CODE_CHUNK = 8192
PRECISIONS = ("fp32", "bf16_rerank", "auto")  # auto: bf16_rerank where bf16 GEMMs run natively, else fp32
DEFAULT_SHORTLIST = 32
# Unit roundoff of bf16 (8 significant bits). The shortlist pass computes s~ = bf16(bf16(b) - 2 q~.e~), the
# score shifted by a constant c (same argmin): b = ||e||^2 - c with c the mean of ||e||^2, so that the bias
# stays small (LLM rows have near-equal norms). q~, e~ are the bf16-rounded inputs, accumulation is fp32;
# with M = max ||e|| and B = max |b|:
#   inputs  |q~.e~ - q.e| <= (2u + u^2) |q||e|   (x2 for the factor -2)
#   bias    u B
#   output  u |s - c| <= u (B + 2 |q| M), twice if the GEMM output is rounded before the bias is added
#   fp32 accumulation ~ D 2^-24 |q||e|, negligible next to u for D < 10^4
# i.e. |s~ + c - s| <= u (8 |q| M + 3 B) + O(u^2); the constants below add margin for the O(u^2) terms.
BF16_UNIT_ROUNDOFF = 2.0 ** -8
BOUND_QUERY_TERM, BOUND_CODE_TERM = 10.0, 4.0
RERANK_FLOATS = 1 << 22  # gathered candidate rows per re-rank block (16 MB of fp32)
RERANK_FIRST = 4  # codes re-ranked in the first round (see _certified_search_rows)


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
    precision: str = "fp32",
    shortlist: int = DEFAULT_SHORTLIST,
    codebook_bf16: torch.Tensor | None = None,
    stats: dict | None = None,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Exact Euclidean nearest codebook rows of each query.

    Returns ``(indices, sq_dist)``: ``[N]`` each for ``k == 1`` (the same assignment as
    ``torch.cdist(q, E).argmin(1)`` up to fp32 rounding of near-ties), else ``[N, k]`` sorted by distance.
    ``codebook_sq_norms`` (from ``squared_norms``) avoids recomputing ``||e||^2`` on every call.
    ``precision``: ``"fp32"``, ``"bf16_rerank"`` (certified bf16 shortlist of ``shortlist >= k`` codes
    re-ranked in fp32, see the module docstring; ``codebook_bf16`` caches the bf16 copy of the codebook) or
    ``"auto"`` (``resolve_precision``).
    ``stats``, if given, is a dict whose ``"rows"`` and ``"fallback_rows"`` (rows re-searched in fp32 because
    the certificate failed) counters are incremented.
    """
    _check_inputs(queries, codebook, k, row_chunk, code_chunk)
    _check_precision(precision, shortlist, k)
    precision = resolve_precision(precision, queries.device)
    rerank = precision == "bf16_rerank" and shortlist < codebook.shape[0]  # else the shortlist is everything
    with exact_fp32(queries.device.type):
        q = queries.float()
        e = codebook.float()
        e_sq = squared_norms(e) if codebook_sq_norms is None else codebook_sq_norms.float()
        if rerank:
            e_low = codebook_bf16 if codebook_bf16 is not None else e.to(torch.bfloat16)
            shift = e_sq.mean()
            bias = e_sq - shift
            low = _LowPrecision(e_low, bias.to(torch.bfloat16), shift, e_sq.max().sqrt(), bias.abs().max())
        idx_parts, dist_parts = [], []
        for start in range(0, q.shape[0], row_chunk):
            q_block = q[start:start + row_chunk]
            if rerank:
                best_val, best_idx = _certified_search_rows(q_block, e, e_sq, low, k, shortlist, code_chunk,
                                                            stats)
            else:
                best_val, best_idx = _search_rows(q_block, e, e_sq, k, code_chunk)
                _count(stats, q_block.shape[0], 0)
            q_sq = (q_block * q_block).sum(dim=1, keepdim=True)
            dist_parts.append((best_val + q_sq).clamp_min_(0.0))
            idx_parts.append(best_idx)
        indices = torch.cat(idx_parts) if idx_parts else q.new_zeros((0, k), dtype=torch.long)
        sq_dist = torch.cat(dist_parts) if dist_parts else q.new_zeros((0, k))
    if k == 1:
        return indices[:, 0], sq_dist[:, 0]
    return indices, sq_dist


def native_bf16_matmul(device: torch.device | str) -> bool:
    """Whether bf16 GEMMs run in hardware here (CUDA with bf16, or a CPU with AVX512-BF16 / AMX); elsewhere
    they are emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private probes: absent = no
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16_rerank"`` where bf16 GEMMs are native, else ``"fp32"``; others unchanged."""
    if precision == "auto":
        return "bf16_rerank" if native_bf16_matmul(device) else "fp32"
    return precision


def bf16_score_error_bound(query_norms: torch.Tensor, max_code_norm: torch.Tensor | float,
                           max_abs_bias: torch.Tensor | float) -> torch.Tensor:
    """Bound on ``|approx - exact|`` of the scores ``||e||^2 - 2 q.e`` of the bf16 shortlist pass, per query
    (``max_abs_bias``: the largest ``| ||e||^2 - c |``, see the constants above)."""
    return BF16_UNIT_ROUNDOFF * (BOUND_QUERY_TERM * query_norms * max_code_norm + BOUND_CODE_TERM * max_abs_bias)


@contextmanager
def _fp32_accumulating_bf16(device_type: str) -> Iterator[None]:
    """cuBLAS may otherwise reduce bf16 GEMMs in reduced precision, which the error bound does not cover."""
    if device_type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = previous


class _LowPrecision(NamedTuple):
    codebook: torch.Tensor  # [K, D] bf16
    bias: torch.Tensor  # [K] bf16: ||e||^2 - shift
    shift: torch.Tensor  # scalar fp32
    max_norm: torch.Tensor  # scalar fp32: max ||e||
    max_abs_bias: torch.Tensor  # scalar fp32


def _certified_search_rows(q, e, e_sq, low: _LowPrecision, k, shortlist, code_chunk, stats):
    """Best ``k`` exact fp32 scores via a bf16 shortlist, certified against the bf16 error bound.

    Two re-rank rounds keep the gathers small: first the ``max(k, RERANK_FIRST)`` best approximate codes
    (certified against the next approximate score), then, for rows that failed, the whole shortlist
    (certified against the worst approximate score kept); rows failing both are searched in exact fp32."""
    with _fp32_accumulating_bf16(q.device.type):
        # the whole pass stays in bf16 (GEMM, bias, top-k): converting the [n, V] scores to fp32 would cost
        # about as much memory traffic as the GEMM saves
        approx_val, short_idx = _search_rows(q.to(torch.bfloat16), low.codebook, low.bias, shortlist, code_chunk)
    approx_val = approx_val.float() + low.shift  # ascending, aligned with short_idx
    bound = bf16_score_error_bound(q.norm(dim=1), low.max_norm, low.max_abs_bias)
    first = min(max(k, RERANK_FIRST), shortlist)
    best_val, best_idx, certified = _rerank_certify(q, e, e_sq, short_idx[:, :first], approx_val[:, :first],
                                                    approx_val[:, min(first, shortlist - 1)], bound, k)
    if first < shortlist and not bool(certified.all()):
        rows = (~certified).nonzero().squeeze(1)
        val, idx, ok = _rerank_certify(q[rows], e, e_sq, short_idx[rows], approx_val[rows],
                                       approx_val[rows, -1], bound[rows], k)
        best_val, best_idx = best_val.index_copy(0, rows, val), best_idx.index_copy(0, rows, idx)
        certified = certified.index_copy(0, rows, ok)
    failed = (~certified).nonzero().squeeze(1)
    _count(stats, q.shape[0], int(failed.numel()))
    if failed.numel():
        val, idx = _search_rows(q[failed], e, e_sq, k, code_chunk)
        best_val, best_idx = best_val.index_copy(0, failed, val), best_idx.index_copy(0, failed, idx)
    return best_val, best_idx


def _rerank_certify(q, e, e_sq, cand_idx, cand_approx, outside_floor, bound, k):
    """Exact best ``k`` among each row's candidates, and whether no other code can beat them.

    ``outside_floor``: per row, a value every non-candidate's approximate score is ``>=``; a non-candidate's
    true score is then ``>= outside_floor - bound``, so the candidates' k-th best exact score must be below."""
    # candidates in index order, so that exact ties resolve to the lower index as in the full search
    cand_idx, order = cand_idx.sort(dim=1)
    exact = _rerank(q, e, e_sq, cand_idx)
    observed = (cand_approx.gather(1, order) - exact).abs().amax(dim=1)
    val, pos = exact.topk(k, dim=1, largest=False, sorted=True)
    certified = val[:, -1] < outside_floor - bound
    if bool((observed > bound).any()):  # the backend breaks the error model: certify nothing
        worst = float((observed / bound).max())
        warnings.warn(f"the bf16 GEMM erred by {worst:.1f}x the certified bound on shortlisted codes: this backend "
                      "does not accumulate bf16 in fp32; those rows fall back to the exact fp32 search (set "
                      "precision='fp32' to skip the attempt).", RuntimeWarning)
        certified = torch.zeros_like(certified)
    return val, cand_idx.gather(1, pos), certified


def _rerank(q: torch.Tensor, e: torch.Tensor, e_sq: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Exact fp32 ``||e||^2 - 2 q.e`` of each query's own candidate codes ``idx [n, m]``."""
    rows = max(1, RERANK_FLOATS // (idx.shape[1] * e.shape[1]))
    parts = []
    for start in range(0, q.shape[0], rows):
        block = idx[start:start + rows]
        dots = torch.bmm(e[block], q[start:start + rows, :, None]).squeeze(2)
        parts.append(e_sq[block] - 2.0 * dots)
    return torch.cat(parts)


def _count(stats: dict | None, rows: int, fallback_rows: int) -> None:
    if stats is not None:
        stats["rows"] = stats.get("rows", 0) + rows
        stats["fallback_rows"] = stats.get("fallback_rows", 0) + fallback_rows


def _search_rows(
    q: torch.Tensor, e: torch.Tensor, e_sq: torch.Tensor, k: int, code_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` of ``||e||^2 - 2 q.e`` over the codebook, one ``code_chunk`` block at a time.

    All three are fp32 (exact search) or all bf16 (the shortlist pass)."""
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


def _check_precision(precision: str, shortlist: int, k: int) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown search precision {precision!r}; choose one of {PRECISIONS}.")
    if precision != "fp32" and shortlist < k:
        raise ValueError(f"shortlist={shortlist} must be >= k={k} (the codes re-ranked in fp32 per query).")


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
