"""Figure-10-style plots (SPAE): reconstruction quality and semantic relevance against the number of tokens,
one line per tokenizer variant, as PNG files (matplotlib, headless backend).

A series is a dict: {"label": str, "tokens": [cumulative tokens per layer], "<metric>": [value per layer]};
values may be None (e.g. no relevance for a layer), such points are skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from spae.io import atomic_path

# metric key -> axis label
FIGURE10_PANELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "relevance": "semantic relevance (CLIP, normalised)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in tests
    import matplotlib.pyplot as plt

    return plt


def line_panels(series: Sequence[dict], panels: dict[str, str], path: str | Path, *, x_key: str = "tokens",
                x_label: str = "tokens (layers 1..l)", title: str | None = None, log_x: bool = True) -> Path:
    """One panel per metric in `panels`, one line per series; written atomically to `path` (PNG)."""
    if not series:
        raise ValueError("no series to plot: the runs given have none of the metrics asked for")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels.items()):
        for s in series:
            points = [(x, y) for x, y in zip(s[x_key], s.get(key) or []) if y is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=s["label"])
        if log_x:
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 4, 16 rather than 2^k
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize="small",
                   bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    rows = (len(labels) + 2) // 3 if handles else 0
    fig.tight_layout(rect=(0, 0.06 * rows, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=120)
    plt.close(fig)
    return path


def figure10(series: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """PSNR, SSIM and semantic relevance against the cumulative token count, one line per variant."""
    return line_panels(series, FIGURE10_PANELS, path, title=title)
