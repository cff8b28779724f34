"""Shape geometry for ``dcnviz synth``: the object classes, the distractors, their non-rigid warps and
rasterisation.

A :class:`Shape` is built in normalised units (roughly unit radius around the origin), warped, scaled to
pixels and rasterised to a binary mask. Points are ``(x, y)`` float image-style coordinates (x right,
y down); a pixel (i, j) is covered when its centre (j, i) lies inside, so a shape at pixel coordinates
rasterises exactly where the scene composes it.

Classes (see ``SYNTH_CLASSES``): ``worm`` an articulated, tapered tube; ``star`` 4-8 pointed arms;
``ring`` an annulus, possibly eccentric; ``blob`` a smooth lumpy closed curve; ``cross`` four straight
parallel-sided arms of unequal length. All but the distractors get a bend and a smooth elastic field,
so every class appears in strongly non-rigid poses. Distractors (``rectangle``, ``triangle``, ``bar``,
``polygon``) are straight-edged and only move rigidly (plus aspect and shear).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DISTRACTORS = ("rectangle", "triangle", "bar", "polygon")
_SHIFT = 4  # cv2 sub-pixel bits: coordinates are rasterised at 1/16 px


@dataclass
class Shape:
    """``polys``: (N, 2) closed contours with the value they fill (1 = object, 0 = hole), drawn in order.
    ``tube``: a centreline (N, 2) and per-point radii (N,), drawn as overlapping discs (worms)."""

    polys: list[tuple[np.ndarray, int]]
    tube: tuple[np.ndarray, np.ndarray] | None = None

    def map(self, fn, radius_scale: float = 1.0) -> "Shape":
        tube = None if self.tube is None else (fn(self.tube[0]), self.tube[1] * radius_scale)
        return Shape([(fn(p), v) for p, v in self.polys], tube)

    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of all contour points and tube discs."""
        pts = [p for p, _ in self.polys]
        if self.tube is not None:
            c, r = self.tube
            pts += [c - r[:, None], c + r[:, None]]
        allp = np.concatenate(pts)
        return (*allp.min(0), *allp.max(0))


def _densify(corners: np.ndarray, step: float = 0.02) -> np.ndarray:
    """Closed polygon with extra points every ``step`` along each edge, corners kept exactly, so a smooth
    warp bends edges instead of only moving corners."""
    out = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        t = np.arange(n)[:, None] / n
        out.append(a + t * (b - a))
    return np.concatenate(out)


def _radial(r: np.ndarray) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, len(r), endpoint=False)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _fourier_radius(rng, n: int, amp: float, kmax: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, kmax + 1):
        r += rng.uniform(0, amp / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    return r


def worm(rng) -> Shape:
    """A tapered tube along a wavy centreline with 0-2 sharp joints (articulation)."""
    t = np.linspace(-1, 1, 160)
    heading = np.zeros_like(t)
    for _ in range(rng.integers(1, 3)):
        heading += rng.uniform(-1.0, 1.0) * np.sin(np.pi * rng.uniform(0.4, 1.6) * t + rng.uniform(0, 2 * np.pi))
    for joint in rng.uniform(-0.6, 0.6, rng.integers(0, 3)):
        heading += (t > joint) * rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
    step = np.diff(t, prepend=t[0])[:, None]
    centre = np.cumsum(step * np.stack([np.cos(heading), np.sin(heading)], 1), 0)
    centre -= centre.mean(0)
    radii = rng.uniform(0.09, 0.17) * (0.3 + 0.7 * (1 - t**2) ** 0.4)
    return Shape([], (centre, radii))


def star(rng) -> Shape:
    n = int(rng.choice([4, 5, 5, 6, 6, 7, 8]))
    inner = rng.uniform(0.25, 0.5)
    ang = np.arange(2 * n) * np.pi / n + rng.uniform(-0.2, 0.2, 2 * n) * np.pi / n
    r = np.where(np.arange(2 * n) % 2 == 0, rng.uniform(0.7, 1.0, 2 * n), inner)
    return Shape([(_densify(np.stack([r * np.cos(ang), r * np.sin(ang)], 1)), 1)])


def ring(rng) -> Shape:
    outer = _radial(_fourier_radius(rng, 240, 0.15, 3))
    ratio = rng.uniform(0.4, 0.72)
    hole = _radial(ratio * _fourier_radius(rng, 240, 0.1, 3)) + rng.uniform(-0.08, 0.08, 2) * (1 - ratio)
    return Shape([(outer, 1), (hole, 0)])


def blob(rng) -> Shape:
    return Shape([(_radial(_fourier_radius(rng, 240, 0.9, 5)), 1)])


def cross(rng) -> Shape:
    w = rng.uniform(0.14, 0.28)
    right, up, left, down = rng.uniform(0.5, 1.0, 4)
    corners = np.array([[w, -w], [right, -w], [right, w], [w, w], [w, down], [-w, down], [-w, w],
                        [-left, w], [-left, -w], [-w, -w], [-w, -up], [w, -up]])
    return Shape([(_densify(corners), 1)])


def distractor(rng, kind: str) -> Shape:
    if kind == "rectangle":
        a = rng.uniform(0.4, 1.0)
        corners = np.array([[-1, -a], [1, -a], [1, a], [-1, a]])
    elif kind == "bar":
        a = rng.uniform(0.06, 0.15)
        corners = np.array([[-1, -a], [1, -a], [1, a], [-1, a]])
    elif kind == "triangle":
        ang = np.sort(rng.uniform(0, 2 * np.pi, 3))
        while np.diff(np.append(ang, ang[0] + 2 * np.pi)).min() < 0.8:
            ang = np.sort(rng.uniform(0, 2 * np.pi, 3))
        corners = np.stack([np.cos(ang), np.sin(ang)], 1)
    else:  # regular pentagon or hexagon
        corners = _radial(np.ones(int(rng.integers(5, 7))))
    return Shape([(corners.astype(np.float64), 1)])


SHAPES = {"worm": worm, "star": star, "ring": ring, "blob": blob, "cross": cross}


def deform(rng, shape: Shape, elastic: float, bend: float, aspect: float, rigid: bool = False) -> Shape:
    """Warp a normalised shape: (unless ``rigid``) a bend of curvature up to ``bend`` about a random axis and
    a smooth random displacement field of amplitude up to ``elastic``; ``bend`` < 1 so that no part of a
    unit-radius shape folds over the bend centre; then a random rotation, an aspect
    change of up to ``aspect`` (log scale) and a small shear. Units stay normalised."""
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    # A squashed tube is just a fatter or thinner worm; keep worms' thickness ratio mostly their own.
    log_a = rng.uniform(-aspect, aspect) * (0.3 if shape.tube is not None else 1.0)
    affine = rot @ np.diag([np.exp(log_a / 2), np.exp(-log_a / 2)]) @ np.array([[1, rng.uniform(-0.25, 0.25)], [0, 1]])
    if rigid:
        return shape.map(lambda p: p @ affine.T, np.sqrt(abs(np.linalg.det(affine))))

    phi = rng.uniform(0, 2 * np.pi)
    axis = np.array([[np.cos(phi), np.sin(phi)], [-np.sin(phi), np.cos(phi)]])
    kappa = rng.uniform(-bend, bend) if rng.random() < 0.7 else 0.0
    waves = [(rng.normal(0, 1.2, (2, 2)), rng.uniform(0, 2 * np.pi, 2)) for _ in range(3)]
    amp = rng.uniform(0.02, elastic) / np.sqrt(len(waves))

    def warp(p):
        q = p @ axis.T  # (along, across) the bend axis
        if abs(kappa) > 1e-6:
            rad = 1 / kappa - q[:, 1]
            q = np.stack([rad * np.sin(kappa * q[:, 0]), 1 / kappa - rad * np.cos(kappa * q[:, 0])], 1)
        p = q @ axis
        for freq, phase in waves:
            p = p + amp * np.sin(p @ freq.T + phase)
        return p @ affine.T

    return shape.map(warp, np.sqrt(abs(np.linalg.det(affine))))


def to_pixels(shape: Shape, target: float, min_radius: float = 2.0) -> Shape:
    """Scale a normalised shape so the geometric mean side of its bounds is ``target`` pixels and move its
    top-left bound to (0, 0). Tube radii are kept >= ``min_radius`` px so thin worms stay visible."""
    x0, y0, x1, y1 = shape.bounds()
    s = target / np.sqrt(max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6))
    out = shape.map(lambda p: (p - (x0, y0)) * s, s)
    if out.tube is not None:
        out = Shape(out.polys, (out.tube[0], np.maximum(out.tube[1], min_radius)))
    return out


def rasterize(shape: Shape, origin: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 0/1 mask of ``shape`` (pixel coordinates) over the window whose top-left pixel is
    ``origin = (x, y)`` and whose shape is ``size = (h, w)``."""
    mask = np.zeros(size, np.uint8)
    off = np.asarray(origin, np.float64)
    scale = 1 << _SHIFT
    for pts, value in shape.polys:
        cv2.fillPoly(mask, [np.round((pts - off) * scale).astype(np.int32)], int(value), cv2.LINE_8, _SHIFT)
    if shape.tube is not None:
        centre, radii = shape.tube
        for (x, y), r in zip(np.round((centre - off) * scale).astype(np.int64), np.round(radii * scale).astype(np.int64)):
            cv2.circle(mask, (int(x), int(y)), int(r), 1, -1, cv2.LINE_8, _SHIFT)
    return mask
