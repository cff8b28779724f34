"""The analysis figures as vector graphics (SVG or PDF) for papers, drawn with matplotlib.

The same content as the raster figures of :mod:`dcnviz.viz.sampling`, laid out the same way (one panel per
unit or RoI, titles above, a footer below): each panel's photo is embedded as an image, and everything
drawn on it (sampling points, the unit, the object box, RoI parts, labels, text) is a vector shape, so it
stays sharp at any zoom and can be edited. Positions are original-image pixels, pixel k covering [k, k+1);
a marker sits at the centre of the pixel holding its point, as in the raster figures.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dcnviz.viz.sampling import GROUP_COLORS, STYLES, Style

FORMATS = ("png", "svg", "pdf")
# ids of the SVG groups holding the markers (each followed by -<panel>-<group or layer>), for editing and tests
GID = {"points": "dcnviz-points", "hollow": "dcnviz-hollow", "weighted": "dcnviz-weighted"}
# points per image pixel: the figure is as many points wide as the raster figure has pixels
_DPI = 72


def _rgb(bgr) -> tuple[float, float, float]:
    return bgr[2] / 255, bgr[1] / 255, bgr[0] / 255


@dataclass
class Shaded:
    """Marks each in its own colour (the effective views' weighted points and bins): ``xy`` (K, 2) square
    markers of half-width ``half`` pixels (``rim``: with a thin dark outline), or ``rects`` (K, 4)
    continuous-edge rectangles, outlined; ``bgr`` (K, 3) their colours, ``alpha`` (K,) their opacities."""

    bgr: np.ndarray
    alpha: np.ndarray
    xy: np.ndarray | None = None
    half: float = 2.0
    rects: np.ndarray | None = None
    rim: bool = False


@dataclass
class Panel:
    """One panel: the BGR ``image`` and what to draw on it.

    points: (G, M, 2) or (M, 2) sampling positions (x, y) with ``valid`` of shape points[..., 0]; unit: its
    (x, y); box: the unit's object [x1, y1, x2, y2] (inclusive corners); roi/bins/regular: a RoI and its
    moved and unmoved parts as continuous-edge rectangles, with ``label``; shaded: marks in their own colours
    (:class:`Shaded`), drawn before the unit."""

    image: np.ndarray
    title: str
    points: np.ndarray | None = None
    valid: np.ndarray | None = None
    unit: tuple[float, float] | None = None
    box: Sequence[float] | None = None
    roi: Sequence[float] | None = None
    bins: np.ndarray | None = None
    regular: np.ndarray | None = None
    label: str | None = None
    shaded: Sequence[Shaded] = ()


def vector_figure(panels: Sequence[Panel], fmt: str, columns: int | None = None, footer: str | None = None,
                  look: Style = STYLES["default"]) -> bytes:
    """The panels as one ``fmt`` ("svg" or "pdf") document, in a grid of ``columns`` (default one row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if fmt not in ("svg", "pdf"):
        raise ValueError(f"vector format must be svg or pdf, got {fmt!r}")
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    cell_w = max(p.image.shape[1] for p in panels)
    cell_h = max(p.image.shape[0] for p in panels)
    title_h, gap = 28, 6
    width = columns * cell_w + (columns + 1) * gap
    height = rows * (cell_h + title_h) + (rows + 1) * gap + (title_h if footer else 0)
    fig = plt.figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor=(40 / 255,) * 3)
    font = 11  # points = pixels here: never below the raster figures' 10 px minimum
    for k, panel in enumerate(panels):
        r, c = divmod(k, columns)
        h, w = panel.image.shape[:2]
        left = gap + c * (cell_w + gap)
        top = gap + r * (cell_h + title_h + gap) + title_h
        ax = fig.add_axes((left / width, 1 - (top + h) / height, w / width, h / height))
        ax.imshow(panel.image[..., ::-1], extent=(0, w, h, 0), interpolation="nearest")
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.axis("off")
        fig.text(left / width, 1 - (top - 6) / height, panel.title, color="white", fontsize=font, va="bottom")
        half = max(2.0, look.size * min(h, w) / 300)
        if panel.box is not None:
            x1, y1, x2, y2 = panel.box
            for color, lw in (("black", 3.0), ("white", 1.2)):
                ax.add_patch(Rectangle((x1, y1), x2 - x1 + 1, y2 - y1 + 1, fill=False, edgecolor=color, linewidth=lw))
        if panel.regular is not None:
            for x1, y1, x2, y2 in np.asarray(panel.regular, np.float64).reshape(-1, 4):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linewidth=0.6,
                                       alpha=0.35))
        if panel.roi is not None:
            x1, y1, x2, y2 = panel.roi
            if look.outline:
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="black", linewidth=4))
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="yellow", linewidth=2.5))
            for x1, y1, x2, y2 in np.asarray(panel.bins, np.float64).reshape(-1, 4):
                if look.outline:
                    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="black", linewidth=3,
                                           alpha=look.alpha))
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=1.6,
                                       alpha=look.alpha))
            if panel.label:
                ax.text(panel.roi[0], panel.roi[1], panel.label, fontsize=font, color="black", va="bottom",
                        bbox=dict(facecolor="yellow", edgecolor="none", pad=1.5))
        if panel.points is not None:
            xy = np.asarray(panel.points, np.float64)
            valid = np.asarray(panel.valid, bool)
            if xy.ndim == 2:
                xy, valid = xy[None], valid[None]
            centres = np.floor(np.clip(xy, 0, [w - 1, h - 1])) + 0.5
            size = (2 * half + 1) ** 2  # marker area in points², as the raster marker's pixels
            for g in range(len(xy)):
                color = _rgb(GROUP_COLORS[g])
                edge = "black" if look.outline else "none"
                marker = "o" if look.round else "s"
                ax.scatter(*centres[g][valid[g]].T, s=size, c=[color], marker=marker, edgecolors=edge,
                           linewidths=0.8, alpha=look.alpha, gid=f"{GID['points']}-{k}-{g}")
                ax.scatter(*centres[g][~valid[g]].T, s=size, facecolors="none", marker=marker,
                           edgecolors=[color], linewidths=1.0, alpha=look.alpha, gid=f"{GID['hollow']}-{k}-{g}")
        for m, marks in enumerate(panel.shaded):
            _draw_shaded(ax, marks, w, h, f"{GID['weighted']}-{k}-{m}")
        if panel.unit is not None:
            _draw_unit(ax, panel.unit, half, look)
    if footer:
        fig.text(gap / width, (title_h / 2) / height, footer, color="white", fontsize=font, va="center", wrap=True)
    buf = io.BytesIO()
    # text stays text (editable, searchable): SVG <text>, PDF TrueType fonts
    with plt.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        fig.savefig(buf, format=fmt, facecolor=fig.get_facecolor())
    plt.close(fig)
    return buf.getvalue()


def _draw_shaded(ax, marks: Shaded, w: int, h: int, gid: str) -> None:
    from matplotlib.patches import Rectangle

    rgba = np.concatenate([np.asarray(marks.bgr, np.float64).reshape(-1, 3)[:, ::-1] / 255,
                           np.asarray(marks.alpha, np.float64).reshape(-1, 1)], axis=1)
    if marks.xy is not None and len(marks.xy):
        centres = np.floor(np.clip(np.asarray(marks.xy, np.float64), 0, [w - 1, h - 1])) + 0.5
        ax.scatter(*centres.T, s=(2 * marks.half + 1) ** 2, c=rgba, marker="s",
                   edgecolors=[(0, 0, 0, a) for a in rgba[:, 3]] if marks.rim else "none", linewidths=0.8, gid=gid)
    for (x1, y1, x2, y2), color in zip(np.asarray(marks.rects if marks.rects is not None else [], np.float64)
                                       .reshape(-1, 4), rgba):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2))


def _draw_unit(ax, unit, half: float, look: Style) -> None:
    """The unit as :func:`dcnviz.viz.sampling.draw_unit` draws it: a green diamond with a white and a dark
    outline, or the paper's green square."""
    from matplotlib.patches import Polygon

    ux, uy = np.floor(unit) + 0.5
    if look.name == "paper":
        ax.scatter([ux], [uy], s=(2 * half + 5) ** 2, c="lime", marker="s")
        return
    big = 4 * half + 2
    ax.add_patch(Polygon([(ux, uy - big), (ux + big, uy), (ux, uy + big), (ux - big, uy)],
                         facecolor="lime", edgecolor="white", linewidth=1.5))
    ax.add_patch(Polygon([(ux, uy - big - 2), (ux + big + 2, uy), (ux, uy + big + 2), (ux - big - 2, uy)],
                         facecolor="none", edgecolor="black", linewidth=1.0))
