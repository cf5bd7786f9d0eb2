"""Stage `codebook`: the frozen word codebook (source LLM's input embeddings of whole English words)."""
from __future__ import annotations

from pathlib import Path

from experiments.pipeline import StageContext, stage
from spae.codebook import Codebook, build_codebook


@stage("codebook", config_keys=("codebook",))
def codebook_stage(ctx: StageContext) -> dict:
    cfg = ctx.cfg["codebook"]
    if Codebook.exists(ctx.out_dir):  # an interrupted run already wrote it
        codebook = Codebook.load(ctx.out_dir)
    else:
        codebook = build_codebook(cfg, Path(ctx.cfg["paths"]["cache_dir"]))
        codebook.save(ctx.out_dir)
    norms = codebook.embeddings.norm(dim=1)
    metrics = {
        "size": codebook.size,
        "dim": codebook.dim,
        "row_norm_mean": round(float(norms.mean()), 4),
        "row_norm_std": round(float(norms.std()), 4),
    }
    if ctx.logger is not None:
        ctx.logger.log_metrics({f"codebook/{k}": v for k, v in metrics.items()})
    return {
        "size": codebook.size,
        "dim": codebook.dim,
        "source": codebook.source,
        "name": cfg.get("name"),
        "first_words": codebook.words[:20],
        "metrics": metrics,
    }
