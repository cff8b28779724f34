"""Pictures of DCNv2's effective views (:mod:`dcnviz.analysis.effective`): sampling points and RoI bins
shaded by their effective weight, the effective receptive field as a heat map, the saliency region.

Inputs are the BGR ``uint8`` image and positions in its original pixels (x, y), pixel k covering [k, k+1),
as :mod:`dcnviz.viz.sampling` takes them. Weights and heat are shown on the JET colour scale relative to
a high percentile (:data:`SATURATE`) of the drawn values (blue: small, red: at or above it; a few large
values would otherwise leave everything else blue), over a dimmed grey copy of the image
(:func:`backdrop`) so the colours stand out. Weakest points are drawn first so the strong ones stay on
top, and fainter (opacity from ``WEAKEST`` up to 1); points of zero weight are not drawn. A modulated
layer's mask multiplies the point's opacity.
"""
from __future__ import annotations

import cv2
import numpy as np

from dcnviz.viz.draw import check_image, style
from dcnviz.viz.sampling import GREEN, RIM, _rect_pixels, marker_half, pixel

HEAT_ALPHA = 0.7
DIM = 0.25  # how much of the image shows outside the saliency region
WEAKEST = 0.3  # opacity of the weakest points (the strongest are opaque)
SATURATE = 99.0  # percentile of the drawn values that maps to the top of the colour scale


def backdrop(image_bgr: np.ndarray, brightness: float = 0.55) -> np.ndarray:
    """The image in grey at ``brightness``, as a BGR uint8 background for colour-coded values."""
    grey = cv2.cvtColor(check_image(image_bgr), cv2.COLOR_BGR2GRAY).astype(np.float64) * brightness
    return cv2.cvtColor(np.round(grey).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def relative(values: np.ndarray) -> np.ndarray:
    """``values`` divided by the :data:`SATURATE` percentile of their positive entries, clipped to [0, 1]."""
    values = np.asarray(values, np.float64)
    positive = values[values > 0]
    if not len(positive):
        return np.zeros_like(values)
    return np.clip(values / np.percentile(positive, SATURATE), 0, 1)


def jet(values: np.ndarray) -> np.ndarray:
    """(N,) values in [0, 1] -> (N, 3) BGR uint8 on OpenCV's JET scale."""
    v = np.clip(np.asarray(values, np.float64), 0, 1)
    return cv2.applyColorMap(np.round(v * 255).astype(np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0]


def draw_weighted_points(image_bgr: np.ndarray, xy, weight, unit_xy=None, opacity=None, large: bool = False
                         ) -> np.ndarray:
    """Points (M, 2) (x, y) shaded by ``weight`` (M,) on a copy of the image (draw on :func:`backdrop`);
    ``opacity`` (M,) in [0, 1] (a modulated layer's mask) blends each marker into the image; ``large``
    draws bigger markers (the node's own layer); ``unit_xy`` marks the unit in green."""
    out = check_image(image_bgr).copy()
    h, w = out.shape[:2]
    half = marker_half(h, w) + 1 if large else max(1, marker_half(h, w) - 1)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    weight = np.asarray(weight, np.float64).reshape(-1)
    alpha = np.ones(len(xy)) if opacity is None else np.clip(np.asarray(opacity, np.float64).reshape(-1), 0, 1)
    order = np.argsort(weight, kind="stable")
    order = order[weight[order] > 0]
    rel = relative(weight)
    colors = jet(rel[order])
    for m, color in zip(order, colors):
        cx, cy = pixel(*xy[m], h, w)
        y0, y1, x0, x1 = max(cy - half, 0), min(cy + half + 1, h), max(cx - half, 0), min(cx + half + 1, w)
        a = alpha[m] * (WEAKEST + (1 - WEAKEST) * rel[m])  # weak points fade into the backdrop
        patch = out[y0:y1, x0:x1].astype(np.float64)
        out[y0:y1, x0:x1] = np.round(patch * (1 - a) + color * a).astype(np.uint8)
    if unit_xy is not None:
        _unit(out, unit_xy)
    return out


def _unit(out: np.ndarray, unit_xy) -> None:
    h, w = out.shape[:2]
    half = marker_half(h, w)
    cx, cy = pixel(*unit_xy, h, w)
    cv2.rectangle(out, (cx - half - 3, cy - half - 3), (cx + half + 3, cy + half + 3), RIM, cv2.FILLED)
    cv2.rectangle(out, (cx - half - 2, cy - half - 2), (cx + half + 2, cy + half + 2), GREEN, cv2.FILLED)


def draw_weighted_bins(image_bgr: np.ndarray, bins, weight, roi) -> np.ndarray:
    """RoI bins (P, P, 4) ``[x1, y1, x2, y2]`` continuous edges, outlined in their weight's colour over
    the RoI (white), strongest last."""
    out = check_image(image_bgr).copy()
    h, w = out.shape[:2]
    lw = style(h, w)[0]
    cv2.rectangle(out, *_rect_pixels(roi, h, w), (255, 255, 255), lw)
    rects = np.asarray(bins, np.float64).reshape(-1, 4)
    weight = np.asarray(weight, np.float64).reshape(-1)
    rel = relative(weight)
    order = np.argsort(weight, kind="stable")
    for m in order[weight[order] > 0]:
        color = tuple(int(c) for c in jet([rel[m]])[0])
        cv2.rectangle(out, *_rect_pixels(rects[m], h, w), color, lw + 1)
    return out


def to_image_size(values: np.ndarray, image_hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """A map at the network-input resolution resized to the original image (bilinear, or nearest for masks)."""
    h, w = image_hw
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(np.asarray(values, np.float32), (w, h), interpolation=interp)


def draw_heatmap(image_bgr: np.ndarray, heat: np.ndarray, unit_xy=None) -> np.ndarray:
    """``heat`` (H, W) at the image's size (:func:`relative`) as a JET overlay on :func:`backdrop` (weight
    ``HEAT_ALPHA`` x sqrt of the relative value, so zero leaves the backdrop as it is and the faint
    tail of the field stays visible)."""
    out = backdrop(image_bgr).astype(np.float64)
    rel = relative(heat)
    colors = cv2.applyColorMap(np.round(rel * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float64)
    alpha = HEAT_ALPHA * np.sqrt(rel)[..., None]
    out = np.round(out * (1 - alpha) + colors * alpha).astype(np.uint8)
    if unit_xy is not None:
        _unit(out, unit_xy)
    return out


def draw_region(image_bgr: np.ndarray, mask: np.ndarray, unit_xy=None) -> np.ndarray:
    """The image inside ``mask`` (H, W bool at the image's size) as it is, the rest dimmed to ``DIM``."""
    out = check_image(image_bgr).copy()
    outside = ~np.asarray(mask, bool)
    out[outside] = np.round(out[outside] * DIM).astype(np.uint8)
    if unit_xy is not None:
        _unit(out, unit_xy)
    return out
