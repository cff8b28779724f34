"""Charts of dataset-level statistics, drawn with matplotlib's Agg backend (no display needed) into PNG bytes."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

# matplotlib's tab10 colours, one per Table 2 bucket (small, medium, large, background)
BUCKET_COLORS = ("#d62728", "#ff7f0e", "#2ca02c", "#7f7f7f")


def dilation_histogram(edges: np.ndarray, counts: np.ndarray, buckets: Sequence[str], title: str,
                       nominal: float | None = None) -> bytes:
    """A PNG of one layer's effective-dilation histograms, one normalised step curve per bucket.

    ``edges`` (B+1,) bin edges in cells; ``counts`` (len(buckets), B+1): column i counts [edges[i],
    edges[i+1]), the last column values >= edges[-1] (shown in the legend, not plotted); ``nominal``, the
    layer's dilation, is marked with a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    width = np.diff(edges)
    for name, row, color in zip(buckets, counts, BUCKET_COLORS):
        n = int(row.sum())
        if n == 0:
            continue
        density = row[:-1] / (n * width)
        over = f", {int(row[-1])} >= {edges[-1]:g}" if row[-1] else ""
        ax.stairs(density, edges, color=color, linewidth=1.5, label=f"{name} (N={n}{over})")
    used = np.flatnonzero(counts[:, :-1].sum(axis=0))
    if len(used):  # the regular bins reach far past most values; show the part that holds them
        ax.set_xlim(0, edges[min(used[-1] + 2, len(edges) - 1)])
    if nominal is not None:
        ax.axvline(nominal, color="black", linestyle="--", linewidth=1, label=f"dilation {nominal:g}")
    ax.set_xlabel("effective dilation (cells of the layer's input map)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
