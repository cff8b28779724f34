"""Pictures of DCNv2's effective views (:mod:`dcnviz.analysis.effective`): sampling points and RoI bins
shaded by their effective weight, the effective receptive field as a heat map, the saliency region.

Inputs are the BGR ``uint8`` image and positions in its original pixels (x, y), pixel k covering [k, k+1),
as :mod:`dcnviz.viz.sampling` takes them. Weights and heat are shown on the JET colour scale relative to
a high percentile (:data:`SATURATE`) of the drawn values (blue: small, red: at or above it; a few large
values would otherwise leave everything else blue), over a dimmed grey copy of the image
(:func:`backdrop`) so the colours stand out. Weakest points are drawn first so the strong ones stay on
top, and fainter (opacity from ``WEAKEST`` up to 1); points of zero weight are not drawn. A modulated
layer's mask and the style's ``alpha`` (``--marker-alpha``) multiply the point's opacity. The unit is drawn
as :func:`dcnviz.viz.sampling.draw_unit` draws it in the style given (:class:`~dcnviz.viz.sampling.Style`);
in the default style every weighted marker also gets a thin dark rim.

:func:`effective_views` gives the three views of one node both as pictures and as
:class:`~dcnviz.viz.vector.Panel` records, so the vector figure (``--format svg|pdf``) shows the same
points, in the same colours, as vector shapes over the embedded background picture.
"""
from __future__ import annotations

import cv2
import numpy as np

from dcnviz.viz.draw import check_image, style
from dcnviz.viz.sampling import RIM, STYLES, Style, _rect_pixels, draw_unit, marker_half, pixel

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


def shaded(weight, opacity=None, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How weighted markers are drawn: (the indices of the points to draw, weakest first and those of zero
    weight left out; their BGR colours; their opacities) for ``weight`` (M,), ``opacity`` (M,) in [0, 1]
    (a modulated layer's mask) and the style's ``alpha``."""
    weight = np.asarray(weight, np.float64).reshape(-1)
    mask = np.ones(len(weight)) if opacity is None else np.clip(np.asarray(opacity, np.float64).reshape(-1), 0, 1)
    order = np.argsort(weight, kind="stable")
    order = order[weight[order] > 0]
    rel = relative(weight)[order]
    return order, jet(rel).reshape(-1, 3), alpha * mask[order] * (WEAKEST + (1 - WEAKEST) * rel)


def weighted_half(h: int, w: int, large: bool, look: Style = STYLES["default"]) -> int:
    """Half-width of a weighted marker: one more than a sample marker for the node's own layer (``large``),
    one less (at least 1) for the layers below it."""
    half = marker_half(h, w, look.size)
    return half + 1 if large else max(1, half - 1)


def draw_weighted_points(image_bgr: np.ndarray, xy, weight, unit_xy=None, opacity=None, large: bool = False,
                         look: Style = STYLES["default"]) -> np.ndarray:
    """Points (M, 2) (x, y) shaded by ``weight`` (M,) on a copy of the image (draw on :func:`backdrop`);
    ``opacity`` (M,) in [0, 1] (a modulated layer's mask) blends each marker into the image; ``large``
    draws bigger markers (the node's own layer); ``unit_xy`` marks the unit (:func:`draw_unit`)."""
    out = check_image(image_bgr).copy()
    h, w = out.shape[:2]
    half = weighted_half(h, w, large, look)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    order, colors, alphas = shaded(weight, opacity, look.alpha)
    rim = 1 if look.outline else 0
    for m, color, a in zip(order, colors, alphas):
        cx, cy = pixel(*xy[m], h, w)
        for r, c in ((half + rim, RIM), (half, color)) if rim else ((half, color),):
            y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
            patch = out[y0:y1, x0:x1].astype(np.float64)  # weak points fade into the backdrop
            out[y0:y1, x0:x1] = np.round(patch * (1 - a) + np.asarray(c, np.float64) * a).astype(np.uint8)
    if unit_xy is not None:
        draw_unit(out, unit_xy, marker_half(h, w, look.size), look)
    return out


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


def draw_heatmap(image_bgr: np.ndarray, heat: np.ndarray, unit_xy=None, look: Style = STYLES["default"]
                 ) -> np.ndarray:
    """``heat`` (H, W) at the image's size (:func:`relative`) as a JET overlay on :func:`backdrop` (weight
    ``HEAT_ALPHA`` x sqrt of the relative value, so zero leaves the backdrop as it is and the faint
    tail of the field stays visible)."""
    out = backdrop(image_bgr).astype(np.float64)
    rel = relative(heat)
    colors = cv2.applyColorMap(np.round(rel * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float64)
    alpha = HEAT_ALPHA * np.sqrt(rel)[..., None]
    out = np.round(out * (1 - alpha) + colors * alpha).astype(np.uint8)
    if unit_xy is not None:
        draw_unit(out, unit_xy, marker_half(*out.shape[:2], look.size), look)
    return out


def draw_region(image_bgr: np.ndarray, mask: np.ndarray, unit_xy=None, look: Style = STYLES["default"]
                ) -> np.ndarray:
    """The image inside ``mask`` (H, W bool at the image's size) as it is, the rest dimmed to ``DIM``."""
    out = check_image(image_bgr).copy()
    outside = ~np.asarray(mask, bool)
    out[outside] = np.round(out[outside] * DIM).astype(np.uint8)
    if unit_xy is not None:
        draw_unit(out, unit_xy, marker_half(*out.shape[:2], look.size), look)
    return out


def effective_views(image_bgr: np.ndarray, layers, heat: np.ndarray, region: np.ndarray, titles, unit_xy=None,
                    bins=None, look: Style = STYLES["default"]) -> tuple[list[np.ndarray], list]:
    """The three views of one node as pictures and as :class:`~dcnviz.viz.vector.Panel` records (the same
    marks as vector shapes over the picture without them).

    layers: per deformable layer, the node's own first, ``(xy (M, 2), weight (M,), mask (M,) or None)`` in
    image pixels; heat: the effective receptive field and region: the saliency mask (bool), both at the
    image's size; titles: the three panel titles; unit_xy: the unit's position (None for a detection; the
    node's own layer is drawn with larger markers for a unit);
    bins: a detection's ``(roi, bins (P, P, 4), weight (P, P))`` (its effective bin locations)."""
    from dcnviz.viz.vector import Panel, Shaded

    h, w = image_bgr.shape[:2]
    base = backdrop(image_bgr)  # the vector figure's background: its marks are drawn as shapes over it
    weighted, marks = base.copy(), []
    for level, (xy, weight, mask) in list(enumerate(layers))[::-1]:  # lowest layer first, the node's on top
        weighted = draw_weighted_points(weighted, xy, weight, opacity=mask, large=level == 0 and unit_xy is not None,
                                        look=look)
        order, colors, alphas = shaded(weight, mask, look.alpha)
        marks.append(Shaded(colors, alphas, xy=np.asarray(xy, np.float64).reshape(-1, 2)[order],
                            half=weighted_half(h, w, level == 0 and unit_xy is not None, look), rim=look.outline))
    if bins is not None:
        roi, rects, weight = bins
        weighted = draw_weighted_bins(weighted, rects, weight, roi)
        order, colors, _ = shaded(weight)
        marks += [Shaded(np.array([[255, 255, 255]], np.uint8), np.ones(1), rects=np.asarray([roi], np.float64)),
                  Shaded(colors, np.ones(len(order)), rects=np.asarray(rects, np.float64).reshape(-1, 4)[order])]
    heat_base, region_base = draw_heatmap(image_bgr, heat), draw_region(image_bgr, region)
    pictures = [weighted, heat_base.copy(), region_base.copy()]
    if unit_xy is not None:
        for picture in pictures:
            draw_unit(picture, unit_xy, marker_half(h, w, look.size), look)
    panels = [Panel(base, titles[0], unit=unit_xy, shaded=marks), Panel(heat_base, titles[1], unit=unit_xy),
              Panel(region_base, titles[2], unit=unit_xy)]
    return pictures, panels
