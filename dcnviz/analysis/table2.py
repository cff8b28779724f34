"""Streaming effective-dilation statistics per layer x bucket (the paper's Table 2), and the paper's values.

Each filter is one (output position, deformable group) of one layer; its value is
:func:`dcnviz.analysis.effective_dilation`, in cells of the layer's input map. Positions are bucketed by
:func:`dcnviz.analysis.assign_buckets`. :class:`DilationStats` keeps, per layer x group x bucket, the count,
the running mean and the sum of squared deviations (M2; Chan et al.'s pairwise update, numerically
stable over millions of filters) and a fixed-bin histogram, so a dataset is processed image by image
in constant memory.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dcnviz.analysis._common import as_float64
from dcnviz.analysis.buckets import BUCKETS, LARGE_MIN_AREA, SMALL_MAX_AREA, assign_buckets

__all__ = ["PAPER_TABLE2", "TABLE2_CONFIG", "DilationStats"]

# Paper Table 2 (Dai et al. 2017), mean and std of effective dilation, R-FCN with DCN res5, VOC 2007 test.
PAPER_TABLE2 = {
    "res5c": {"small": (5.3, 3.3), "medium": (5.8, 3.5), "large": (8.4, 4.5), "background": (6.2, 3.0)},
    "res5b": {"small": (2.5, 1.3), "medium": (3.1, 1.5), "large": (5.1, 2.5), "background": (3.2, 1.2)},
    "res5a": {"small": (2.2, 1.2), "medium": (2.9, 1.3), "large": (4.2, 1.6), "background": (3.1, 1.1)},
}

# Every choice behind dcnviz's Table 2 numbers (the paper does not state them); JSON-ready.
TABLE2_CONFIG = {
    "measure": "effective dilation: mean Euclidean distance between horizontally or vertically adjacent "
               "sampling locations of one filter (12 pairs for 3x3, no diagonals; zero offsets give the dilation)",
    "units": "feature-map cells of the layer's input map",
    "taps": "each layer's own kh*kw taps, not the composed 729 points",
    "offset_layout": "group g owns channels g*2*kh*kw...; tap k = i*kw + j has dy at 2k, dx at 2k+1",
    "filter_centre": "output cell (i, j) -> image (y, x) = ((i + 0.5) * stride / scale, (j + 0.5) * stride / scale)",
    "boxes": "[x1, y1, x2, y2] 0-based inclusive original-image pixels; area = (x2-x1+1)*(y2-y1+1); "
             "contains (x, y) iff x1 <= x < x2+1 and y1 <= y < y2+1",
    "assignment": "bucket of the smallest-area non-difficult GT box containing the filter centre; "
                  "background if no box contains it; left out if only difficult boxes contain it",
    "small_max_area": SMALL_MAX_AREA,
    "large_min_area": LARGE_MIN_AREA,
    "buckets": "small: area < 96^2; medium: 96^2 <= area <= 224^2 (exact 96^2 and 224^2 go to medium; the "
               "paper's caption leaves them out); large: area > 224^2",
    "groups": "pooled: every (position, group) is one filter, so the mean is the average of the group means "
              "and the std includes the spread between groups; per-group: one table per deformable group",
    "std": "population standard deviation (ddof=0)",
    "histogram": "bins of equal width from 0 to hist_max cells, plus a last bin for values >= hist_max",
}

_GROUP_MODES = ("pooled", "per-group")


def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s combination of two (count, mean, M2) summaries, elementwise; empty sides are fine."""
    n = n_a + n_b
    frac = np.divide(n_b, n, out=np.zeros(np.shape(n), np.float64), where=n > 0)
    delta = mean_b - mean_a
    return n, mean_a + delta * frac, m2_a + m2_b + delta * delta * n_a * frac


class DilationStats:
    """Accumulates effective dilation per layer x deformable group x bucket over many images.

    Args:
        hist_max: upper end (cells) of the histogram's regular bins; values >= hist_max go to an extra bin.
        hist_bins: number of regular bins of width hist_max / hist_bins starting at 0.
    """

    def __init__(self, hist_max: float = 32.0, hist_bins: int = 128):
        if not (isinstance(hist_bins, int) and hist_bins >= 1 and hist_max > 0):
            raise ValueError(f"hist_bins must be a positive int and hist_max > 0, got {hist_bins!r}, {hist_max!r}")
        self.edges = np.linspace(0.0, float(hist_max), hist_bins + 1)
        self.images = 0  # images added with add_image
        self._layers: dict[str, dict[str, np.ndarray]] = {}

    def update(self, layer: str, dilation, buckets) -> None:
        """Add one map: ``dilation`` (G, Ho, Wo) or (Ho, Wo) effective dilation in cells, ``buckets``
        (Ho, Wo) from :func:`assign_buckets` (EXCLUDED positions are skipped)."""
        d = as_float64(dilation, "dilation")
        d = d[None] if d.ndim == 2 else d
        b = np.asarray(buckets)
        if d.ndim != 3 or b.shape != d.shape[1:]:
            raise ValueError(f"dilation must be (G, Ho, Wo) or (Ho, Wo) and buckets (Ho, Wo) of the same size, "
                             f"got {tuple(d.shape)} and {b.shape}")
        if not np.isfinite(d).all() or (d < 0).any():
            raise ValueError(f"dilation of layer {layer!r} must be finite and >= 0")
        if layer not in self._layers:
            g, k, nbins = d.shape[0], len(BUCKETS), len(self.edges)
            self._layers[layer] = {"n": np.zeros((g, k), np.int64), "mean": np.zeros((g, k)), "m2": np.zeros((g, k)),
                                   "hist": np.zeros((g, k, nbins), np.int64)}
        acc = self._layers[layer]
        if acc["n"].shape[0] != d.shape[0]:
            raise ValueError(f"layer {layer!r} had {acc['n'].shape[0]} deformable groups, got {d.shape[0]}")
        for k in range(len(BUCKETS)):
            v = d[:, b == k]  # (G, n)
            if v.shape[1] == 0:
                continue
            mean = v.mean(axis=1)
            m2 = ((v - mean[:, None]) ** 2).sum(axis=1)
            acc["n"][:, k], acc["mean"][:, k], acc["m2"][:, k] = _merge(
                acc["n"][:, k], acc["mean"][:, k], acc["m2"][:, k], v.shape[1], mean, m2)
            # bin i holds [edges[i], edges[i+1]); the last index (len(edges) - 1) holds values >= hist_max
            idx = np.searchsorted(self.edges, v, side="right") - 1
            for g in range(v.shape[0]):
                acc["hist"][g, k] += np.bincount(idx[g], minlength=len(self.edges))

    def add_image(self, dilation_maps: Mapping[str, object], prep, boxes, difficult=None, *,
                  stride: float | Mapping[str, float]) -> None:
        """Add one image: ``dilation_maps`` layer name -> (G, Ho, Wo) effective dilation, ``prep`` its
        :class:`dcnviz.structures.Prep` (only ``scale`` is used), ``boxes`` (B, 4) GT boxes (0-based inclusive
        original pixels) with ``difficult`` (B,) flags, ``stride`` the maps' feature stride (16 for res5), or
        layer name -> its map's own stride (layers may differ: a model of your own; FPN DCN's res3b3, res4b22
        and res5 at 8, 16 and 32)."""
        cache: dict[tuple, np.ndarray] = {}
        for layer, dilation in dilation_maps.items():
            own = stride[layer] if isinstance(stride, Mapping) else stride
            key = (tuple(np.shape(dilation)[-2:]), own)
            if key not in cache:
                cache[key] = assign_buckets(key[0], prep.scale, own, boxes, difficult)
            self.update(layer, dilation, cache[key])
        self.images += 1

    def state(self) -> dict:
        """Everything accumulated, JSON-ready: ``{"images", "hist_max", "hist_bins", "layers": {layer: {"n",
        "mean", "m2": (G, 4) lists, "hist": (G, 4, hist_bins + 1) list}}}``; floats survive a JSON round
        trip exactly."""
        return {"images": self.images, "hist_max": float(self.edges[-1]), "hist_bins": len(self.edges) - 1,
                "layers": {layer: {k: v.tolist() for k, v in acc.items()} for layer, acc in self._layers.items()}}

    @classmethod
    def from_state(cls, state: Mapping) -> "DilationStats":
        """The statistics of :meth:`state`; a layer without ``"hist"`` gets empty histograms."""
        stats = cls(state["hist_max"], state["hist_bins"])
        stats.images = int(state["images"])
        for layer, acc in state["layers"].items():
            n = np.asarray(acc["n"], np.int64)
            hist = acc.get("hist")
            stats._layers[layer] = {
                "n": n, "mean": np.asarray(acc["mean"], np.float64), "m2": np.asarray(acc["m2"], np.float64),
                "hist": np.zeros((*n.shape, len(stats.edges)), np.int64) if hist is None else np.asarray(hist, np.int64)}
        return stats

    def merge(self, other: "DilationStats") -> None:
        """Add the images of ``other`` (same histogram bins): counts and histograms summed, means and M2
        combined by Chan's formula in float64, never averaged. Merging the one-image statistics of each
        image in image order gives bit for bit what :meth:`add_image` in that order gives, so a dataset
        split over processes or interrupted runs can be put back together exactly."""
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("cannot merge DilationStats with different histogram bins")
        for layer, b in other._layers.items():
            a = self._layers.get(layer)
            if a is None:
                self._layers[layer] = {k: v.copy() for k, v in b.items()}
                continue
            if a["n"].shape != b["n"].shape:
                raise ValueError(f"layer {layer!r}: {a['n'].shape[0]} vs {b['n'].shape[0]} deformable groups")
            a["n"], a["mean"], a["m2"] = _merge(a["n"], a["mean"], a["m2"], b["n"], b["mean"], b["m2"])
            a["hist"] = a["hist"] + b["hist"]
        self.images += other.images

    def _totals(self, layer: str, groups: str):
        if groups not in _GROUP_MODES:
            raise ValueError(f"groups must be one of {_GROUP_MODES}, got {groups!r}")
        acc = self._layers[layer]
        n, mean, m2, hist = acc["n"], acc["mean"], acc["m2"], acc["hist"]
        if groups == "pooled":
            total = (n[0], mean[0], m2[0])
            for g in range(1, n.shape[0]):
                total = _merge(*total, n[g], mean[g], m2[g])
            return [total], [hist.sum(axis=0)]
        return list(zip(n, mean, m2)), list(hist)

    def summary(self, groups: str = "pooled") -> dict:
        """{layer: {bucket: {"mean", "std", "n"}}} for ``groups="pooled"``, or {layer: [that dict per
        group]} for "per-group"; mean and std in cells (std with ddof=0), None where n == 0."""
        out = {}
        for layer in self._layers:
            tables = []
            for n, mean, m2 in self._totals(layer, groups)[0]:
                tables.append({name: {"mean": float(mean[k]) if n[k] else None,
                                      "std": float(np.sqrt(m2[k] / n[k])) if n[k] else None,
                                      "n": int(n[k])} for k, name in enumerate(BUCKETS)})
            out[layer] = tables[0] if groups == "pooled" else tables
        return out

    def histograms(self, groups: str = "pooled") -> dict[str, np.ndarray]:
        """{layer: int64 counts} of shape (4, len(edges)) pooled or (G, 4, len(edges)) per group, buckets in
        BUCKETS order; column i counts [edges[i], edges[i+1]), the last column values >= edges[-1]."""
        out = {}
        for layer in self._layers:
            hists = self._totals(layer, groups)[1]
            out[layer] = hists[0] if groups == "pooled" else np.stack(hists)
        return out
