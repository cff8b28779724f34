"""Composed sampling locations of an activation unit through stacked deformable conv layers (paper Fig. 6).

Coordinates are continuous (y, x) = (row, column) positions in feature-map cells, integers at cell
centres. A tap of layer l samples its INPUT map at

    (y, x) = (p_y*stride_h - pad_h + i*dil_h + dy_k,  p_x*stride_w - pad_w + j*dil_w + dx_k)

for output position p and tap k = i*kw + j, with (dy_k, dx_k) read from the layer's offset map at p
(channels g*2*kh*kw + 2k and + 2k + 1 for group g). Going down a stack, layer l's input map is taken to
be layer l+1's output map (the offset map's grid): 1x1 convs and residual paths in between are ignored,
as in the paper's figure, so the result is "composed sampling locations", not a receptive field.

Every point expands into all kh*kw taps, each with its own offset; nothing is dropped at borders (the
official code drops out-of-map taps before adding offsets, then pairs offsets with the shortened list).
The offsets of a fractional position are read by **bilinear interpolation** of the four surrounding
cells; with ``round=True`` they are read at the nearest cell and the taps are built around that cell,
as the official visualizer does (numpy rounding, halves to even). A position outside the offset map reads
the nearest map position (border replicated). Points outside a map are kept and flagged: ``inside`` uses
the DCNv1 op's own rule (0 <= y < H, 0 <= x < W; the op reads zero elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcnviz.analysis._common import as_float64, pair, split_offset, tap_grid
from dcnviz.analysis.coords import feature_to_image

__all__ = ["LayerGeometry", "SamplingLocations", "sampling_locations", "inside_rule"]


@dataclass(frozen=True)
class LayerGeometry:
    """Geometry of one deformable conv layer, read from the model (ints are expanded to (h, w) pairs).

    The official res5 layers are kernel 3, dilation 2, padding 2, stride 1, with deformable_groups 4
    (R-FCN/Faster R-CNN COCO) or 1 (DeepLab, the ``deform_conv`` demo model).
    """

    kernel_size: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int]
    stride: tuple[int, int]
    deformable_groups: int = 1

    def __post_init__(self):
        for name in ("kernel_size", "dilation", "padding", "stride"):
            object.__setattr__(self, name, pair(getattr(self, name), name))
        if min(self.kernel_size + self.dilation + self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"kernel_size, dilation and stride must be >= 1 and padding >= 0, got {self}")
        if not isinstance(self.deformable_groups, int) or self.deformable_groups < 1:
            raise ValueError(f"deformable_groups must be a positive int, got {self.deformable_groups!r}")

    @classmethod
    def from_module(cls, module) -> "LayerGeometry":
        """From a conv module with ``weight`` (F, C/groups, kh, kw) and ``stride``, ``padding``, ``dilation``
        attributes: ``dcnviz.ops.DeformConv2d`` (with its ``deformable_groups``) or an ordinary
        ``nn.Conv2d``, whose fixed grid is that of a deformable conv with zero offsets and one group."""
        kh, kw = (int(s) for s in module.weight.shape[-2:])
        return cls((kh, kw), module.dilation, module.padding, module.stride,
                   getattr(module, "deformable_groups", 1))

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Output (Ho, Wo) for an input map (H, W), by the op's size formula."""
        return tuple((n + 2 * p - (d * (k - 1) + 1)) // s + 1 for n, p, d, k, s in
                     zip(input_size, self.padding, self.dilation, self.kernel_size, self.stride))


@dataclass(frozen=True)
class SamplingLocations:
    """Result of :func:`sampling_locations` for L layers, K = kh*kw taps per layer, M = K**L points.

    points: float64 (M, 2), or (G, M, 2) for ``group="all"``: (y, x) in cells of the BOTTOM layer's input
        map. Point m descends through taps k_0 (top layer), ..., k_{L-1}: m = sum_l k_l * K**(L-1-l).
    inside: bool, shape of points[..., 0]: the point lies in [0, H) x [0, W) of that map.
    valid: bool, same shape: ``inside``, and so was every intermediate point it descends from (in its
        own map); a point that is not valid carries no signal through the DCNv1 op.
    map_size: (H, W) of the bottom layer's input map.
    group: the ``group`` argument (an int, "all" or "mean").
    """

    points: np.ndarray
    inside: np.ndarray
    valid: np.ndarray
    map_size: tuple[int, int]
    group: int | str

    def image_xy(self, scale: float, stride: float) -> np.ndarray:
        """The points in original-image pixels as (x, y) pairs (shape of ``points``), for a bottom input
        map of feature stride ``stride`` and an image resized by ``scale`` (:func:`feature_to_image`)."""
        return feature_to_image(self.points, scale, stride)[..., ::-1]


def inside_rule(points: np.ndarray, size: tuple[int, int], boundary: str = "dcnv1") -> np.ndarray:
    """Whether positions (..., 2) (y, x) on an H x W map read a non-zero bilinear value under a layer's
    boundary rule: "dcnv1" (MXNet, dcnviz.ops) 0 <= y < H, 0 <= x < W; "dcnv2" (torchvision, mmcv)
    -1 < y < H, -1 < x < W."""
    y, x = points[..., 0], points[..., 1]
    if boundary == "dcnv1":
        return (y >= 0) & (y < size[0]) & (x >= 0) & (x < size[1])
    if boundary == "dcnv2":
        return (y > -1) & (y < size[0]) & (x > -1) & (x < size[1])
    raise ValueError(f"boundary must be 'dcnv1' or 'dcnv2', got {boundary!r}")


def _read(field: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Offsets (P, K, 2) of ``field`` (K, 2, Ho, Wo) at positions (P, 2), bilinear, border replicated.
    Integer positions read their cell exactly."""
    ho, wo = field.shape[-2:]
    y = np.clip(pos[:, 0], 0, ho - 1)
    x = np.clip(pos[:, 1], 0, wo - 1)
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, ho - 1), np.minimum(x0 + 1, wo - 1)
    ly, lx = y - y0, x - x0
    out = (field[..., y0, x0] * ((1 - ly) * (1 - lx)) + field[..., y0, x1] * ((1 - ly) * lx)
           + field[..., y1, x0] * (ly * (1 - lx)) + field[..., y1, x1] * (ly * lx))
    return out.transpose(2, 0, 1)


def _expand(points: np.ndarray, field: np.ndarray, geom: LayerGeometry, nearest: bool) -> np.ndarray:
    """Points (P, 2) in the layer's output map -> their taps (P*K, 2) in its input map, tap-major per point."""
    base = np.round(points) if nearest else points
    regular = tap_grid(*geom.kernel_size, *geom.dilation) - np.asarray(geom.padding, np.float64)
    taps = base[:, None, :] * np.asarray(geom.stride, np.float64) + regular[None] + _read(field, base)
    return taps.reshape(-1, 2)


def _offset_fields(offsets_top_first, geoms) -> list[np.ndarray]:
    """Each layer's offsets as (G, K, 2, Ho, Wo)."""
    fields = []
    for level, (offset, geom) in enumerate(zip(offsets_top_first, geoms)):
        name = f"offsets_top_first[{level}]"
        off = as_float64(offset, name)
        if off.ndim == 4 and off.shape[0] == 1:
            off = off[0]
        if off.ndim != 3:
            raise ValueError(f"{name} must have shape (C, Ho, Wo) or (1, C, Ho, Wo), got {tuple(off.shape)}")
        kh, kw = geom.kernel_size
        g = geom.deformable_groups
        fields.append(split_offset(off, name, kh, kw, g).reshape((g, kh * kw, 2) + off.shape[-2:]))
    return fields


def _input_sizes(fields, geoms, input_size) -> list[tuple[int, int]]:
    """Input map size of every layer; checks that each layer's input is the next lower layer's output."""
    bottom = geoms[-1]
    if input_size is None:
        if bottom.stride != (1, 1):
            raise ValueError("input_size (H, W) of the bottom layer's input map is required when its stride is not 1")
        input_size = tuple(n - 2 * p + d * (k - 1) for n, p, d, k in
                           zip(fields[-1].shape[-2:], bottom.padding, bottom.dilation, bottom.kernel_size))
    sizes = [tuple(f.shape[-2:]) for f in fields[1:]] + [pair(input_size, "input_size")]
    for level, (field, geom, size) in enumerate(zip(fields, geoms, sizes)):
        if geom.output_size(size) != tuple(field.shape[-2:]):
            raise ValueError(f"offsets_top_first[{level}] is {field.shape[-2]}x{field.shape[-1]}, but layer {level} "
                             f"with {geom} on its {size[0]}x{size[1]} input map outputs "
                             f"{geom.output_size(size)}; the offsets must be ordered top layer first")
    return sizes


def sampling_locations(offsets_top_first, unit, geometry, *, group: int | str = 0, round: bool = False,
                       input_size: tuple[int, int] | None = None, boundary="dcnv1") -> SamplingLocations:
    """The (kh*kw)**L sampling locations of one activation unit through L stacked deformable layers
    (9**3 = 729 for the paper's three 3x3 res5 layers).

    Args:
        offsets_top_first: L offset maps, top layer first (res5c, res5b, res5a), torch tensors or numpy
            arrays (2*G*kh*kw, Ho, Wo) or (1, 2*G*kh*kw, Ho, Wo), in cells of the layer's input map.
        unit: (y, x) integer output cell of the top layer.
        geometry: one :class:`LayerGeometry` per layer (top first), or one shared by all layers.
        group: deformable group whose offsets are followed at every layer (an int), "all" (every group
            separately; all layers need the same G), or "mean" (the group-averaged offset field; for a
            single layer this equals averaging the G point sets tap by tap).
        round: read offsets at the nearest cell and build taps around it, as the official code does,
            instead of bilinear interpolation at the exact position.
        input_size: (H, W) of the bottom layer's input map; derived from its offset map when its
            stride is 1.
        boundary: the layers' boundary rule for ``inside``/``valid`` (:func:`inside_rule`), one for all
            layers or one per layer (top first): "dcnv1" (default) or "dcnv2" (torchvision layers).

    Map points to image pixels with :func:`dcnviz.analysis.feature_to_image` and the stride of the
    bottom layer's input map.
    """
    offsets_top_first = list(offsets_top_first)
    if not offsets_top_first:
        raise ValueError("offsets_top_first must hold at least one offset map")
    if isinstance(geometry, LayerGeometry):
        geoms = [geometry] * len(offsets_top_first)
    else:
        geoms = list(geometry)
        if len(geoms) != len(offsets_top_first) or not all(isinstance(g, LayerGeometry) for g in geoms):
            raise ValueError(f"geometry must be a LayerGeometry or one per offset map ({len(offsets_top_first)})")
    fields = _offset_fields(offsets_top_first, geoms)
    sizes = _input_sizes(fields, geoms, input_size)

    groups = {g.deformable_groups for g in geoms}
    if group == "mean":
        variants = [[f.mean(axis=0) for f in fields]]
    elif group == "all" or (isinstance(group, (int, np.integer)) and not isinstance(group, bool)):
        if len(groups) != 1:
            raise ValueError(f"group={group!r} needs the same deformable_groups in every layer, got {sorted(groups)}")
        count = groups.pop()
        if group != "all" and not 0 <= group < count:
            raise ValueError(f"group must be in [0, {count}), 'all' or 'mean', got {group}")
        chosen = range(count) if group == "all" else [group]
        variants = [[f[g] for f in fields] for g in chosen]
    else:
        raise ValueError(f"group must be an int, 'all' or 'mean', got {group!r}")

    top = fields[0].shape[-2:]
    if (len(unit) != 2 or not all(isinstance(v, (int, np.integer)) for v in unit)
            or not (0 <= unit[0] < top[0] and 0 <= unit[1] < top[1])):
        raise ValueError(f"unit must be an integer (y, x) cell of the top layer's {top[0]}x{top[1]} output map, "
                         f"got {unit!r}")

    rules = [boundary] * len(geoms) if isinstance(boundary, str) else list(boundary)
    if len(rules) != len(geoms):
        raise ValueError(f"boundary must be one rule or one per offset map ({len(geoms)}), got {boundary!r}")
    results = []
    for variant in variants:
        points = np.asarray([unit], np.float64)
        valid = np.ones(1, bool)
        for field, geom, size, rule in zip(variant, geoms, sizes, rules):
            points = _expand(points, field, geom, round)
            valid = np.repeat(valid, field.shape[0]) & inside_rule(points, size, rule)
        results.append((points, inside_rule(points, sizes[-1], rules[-1]), valid))
    points, inside, valid = (np.stack(r) if group == "all" else r[0] for r in zip(*results))
    return SamplingLocations(points, inside, valid, sizes[-1], group)
