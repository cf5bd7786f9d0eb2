"""Exact nearest-codeword search against an LLM-vocabulary codebook: speed, memory, agreement.

Run from the repo root::

    .venv/bin/python -m benchmarks.perf.quantizer --quick      # N=2,048 queries
    .venv/bin/python -m benchmarks.perf.quantizer              # N=16,384 queries

For each vocabulary size V (default 22,000 = the embedded Gemma word vocabulary, and 65,536) and
D=640, random N(0,1) queries and codebook, it times

* ``cdist``  : ``torch.cdist(q, E).argmin(1)`` (materialises the N x V distance matrix);
* ``chunked``: ``spae.nn_search.nearest`` (blocked ``||e||^2 - 2 q E^T`` GEMM + running min);
* ``vqpt``   : vector-quantize-pytorch ``VectorQuantize`` with a frozen codebook (eval, no grad), only if
  that package is installed (an optional benchmark dependency: ``pip install vector-quantize-pytorch``);
* ``gemm``   : a plain fp32 ``torch.mm`` of one search block (row_chunk x D x code_chunk), the ceiling.

``--device cuda`` runs the same on a GPU (times synchronised, memory = torch's allocator peak over the
inputs, after one warm-up run).

GFLOP/s counts the essential 2*N*V*D multiply-adds for every method. Peak extra memory is the rise of
the process's peak RSS (VmHWM, reset once the inputs exist) over its RSS then; every measurement runs
in a fresh process. Assignments of every method are compared with the chunked search;
disagreements are reported with their float64 distance gap (near-ties decided by fp32 rounding).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

METHODS = ("gemm", "cdist", "chunked", "vqpt")


def make_inputs(n: int, vocab: int, dim: int, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g).to(device), torch.randn(vocab, dim, generator=g).to(device)


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def reset_peak_rss() -> None:
    """Reset the kernel's RSS high-water mark (VmHWM) so earlier transients (imports) do not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def build_runner(method: str, q: torch.Tensor, e: torch.Tensor, row_chunk: int, code_chunk: int):
    """A zero-argument callable returning the assignments (None for the GEMM reference)."""
    if method == "cdist":
        return lambda: torch.cdist(q, e).argmin(1)
    if method == "chunked":
        from spae.nn_search import nearest, squared_norms

        e_sq = squared_norms(e)  # precomputed once per frozen codebook, as the quantizers do
        return lambda: nearest(q, e, codebook_sq_norms=e_sq, row_chunk=row_chunk, code_chunk=code_chunk)[0]
    if method == "vqpt":
        from vector_quantize_pytorch import VectorQuantize

        vq = VectorQuantize(dim=e.shape[1], codebook_size=e.shape[0], freeze_codebook=True).eval().to(e.device)
        vq._codebook.embed.copy_(e[None])  # frozen LLM codebook in place of the learned one
        return lambda: vq(q[None])[1][0]
    if method == "gemm":
        a = q[:row_chunk].contiguous()
        b = e[:code_chunk].T.contiguous()
        out = torch.empty(a.shape[0], b.shape[1], device=q.device)
        def block_gemm():  # the block's time is scaled to the full N x V problem by the worker
            torch.mm(a, b, out=out)

        return block_gemm
    raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("highest")  # fp32 everywhere (no TF32), as the quantizers search
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    q, e = make_inputs(args.n, args.vocab, args.dim, device=args.device)
    with torch.no_grad():
        runner = build_runner(args.method, q, e, args.row_chunk, args.code_chunk)
        if cuda:  # warm-up (kernel selection, allocator) before the peak is reset
            runner()
            sync()
            torch.cuda.reset_peak_memory_stats()
        else:  # one-time BLAS / thread-pool start-up is not the method's memory
            torch.mm(q[:256], e[:256].T)
            reset_peak_rss()
        base = torch.cuda.memory_allocated() if cuda else rss_kb() * 1024
        times = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            idx = runner()
            sync()
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_kb() * 1024
    seconds = min(times)
    if args.method == "gemm":  # block time -> full-problem time at the block's rate
        block = min(args.row_chunk, args.n) * min(args.code_chunk, args.vocab)
        seconds *= args.n * args.vocab / block
    else:
        torch.save(idx.cpu(), args.out)
    print(json.dumps({"seconds": seconds, "extra_mb": max(0, peak - base) / 2**20}))


def measure(method: str, args, vocab: int, out_path: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.perf.quantizer", "--worker", method, "--n", str(args.n),
           "--vocab-one", str(vocab), "--dim", str(args.dim), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--row-chunk", str(args.row_chunk),
           "--code-chunk", str(args.code_chunk), "--device", args.device, "--out", out_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def disagreement(idx: torch.Tensor, ref: torch.Tensor, n: int, vocab: int, dim: int) -> str:
    diff = (idx != ref).nonzero().squeeze(1)
    if diff.numel() == 0:
        return "identical"
    q, e = make_inputs(n, vocab, dim)
    qd, a, b = q[diff].double(), e[idx[diff]].double(), e[ref[diff]].double()
    gap = ((qd - a) ** 2).sum(1) - ((qd - b) ** 2).sum(1)
    rel = (gap.abs() / ((qd - b) ** 2).sum(1)).max().item()
    return f"{diff.numel()} differ (max relative float64 distance gap {rel:.1e})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=2,048 queries instead of 16,384")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--vocab", type=int, nargs="+", default=[22000, 65536])
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method; the minimum is kept")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--row-chunk", type=int, default=None)
    parser.add_argument("--code-chunk", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU memory is then torch's allocator peak)")
    parser.add_argument("--max-dense-gb", type=float, default=3.0,
                        help="skip cdist / vqpt when their N x V matrix would exceed this")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--vocab-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from spae.nn_search import DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK

    args.n = args.n or (2048 if args.quick else 16384)
    args.row_chunk = args.row_chunk or DEFAULT_ROW_CHUNK
    args.code_chunk = args.code_chunk or DEFAULT_CODE_CHUNK
    if args.worker:
        args.method, args.vocab = args.worker, args.vocab_one
        return worker(args)

    methods = [m for m in args.methods if m != "vqpt" or _has_vqpt()]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} CPU threads"
    print(f"# nearest-codeword search, N={args.n}, D={args.dim}, torch {torch.__version__}, "
          f"{where}, fp32 (no TF32), row_chunk={args.row_chunk}, code_chunk={args.code_chunk}, "
          f"best of {args.repeats}")
    if "vqpt" in args.methods and "vqpt" not in methods:
        print("# vector-quantize-pytorch not installed: vqpt skipped (pip install vector-quantize-pytorch)")
    print(f"| V | method | time s | GFLOP/s | % of GEMM | peak extra MB | assignments vs chunked |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in args.vocab:
            flops = 2.0 * args.n * vocab * args.dim
            dense_gb = args.n * vocab * 4 / 1e9
            rows, results = {}, {}
            for method in methods:
                if method in ("cdist", "vqpt") and dense_gb > args.max_dense_gb:
                    rows[method] = f"skipped: N x V matrix {dense_gb:.1f} GB > --max-dense-gb {args.max_dense_gb}"
                    continue
                path = os.path.join(tmp, f"{method}_{vocab}.pt")
                results[method] = measure(method, args, vocab, path)
                results[method]["path"] = path
            gemm_rate = flops / results["gemm"]["seconds"] / 1e9 if "seconds" in results.get("gemm", {}) else None
            ref = torch.load(results["chunked"]["path"]) if "seconds" in results.get("chunked", {}) else None
            for method in methods:
                r = results.get(method)
                if r is None:
                    print(f"| {vocab} | {method} | {rows[method]} | | | | |")
                    continue
                if "error" in r:
                    print(f"| {vocab} | {method} | failed: {r['error']} | | | | |")
                    continue
                rate = flops / r["seconds"] / 1e9
                pct = f"{100 * rate / gemm_rate:.0f}%" if gemm_rate else "n/a"
                agree = "-"
                if method not in ("gemm", "chunked") and ref is not None:
                    agree = disagreement(torch.load(r["path"]), ref, args.n, vocab, args.dim)
                mem = "-" if method == "gemm" else f"{r['extra_mb']:.0f}"
                print(f"| {vocab} | {method} | {r['seconds']:.3f} | {rate:.1f} | {pct} | {mem} | {agree} |")


def _has_vqpt() -> bool:
    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
