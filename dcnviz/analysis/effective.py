"""DCNv2's three views of what a node of a deformable network depends on (Zhu et al., "Deformable ConvNets
v2", CVPR 2019, Sec. 2.1, Figs. 1-2), for any model with deformable layers (:class:`dcnviz.models.hooks.Probe`).

Definitions:

- **Node:** the output of a deformable layer (the layer module's own output, e.g. ``res5c`` = the
  deformable conv ``res5c_branch2b``) at the unit's cell, summed over channels (or one ``channel``). For
  a detection: its class score before softmax (``cls_score`` of the detection's box scored as the RoI).
- **Effective sampling locations:** for every deformable layer at or below the node's layer (through
  ``levels``) and every sampling point (position, tap, deformable group) of that layer, the weight
  ``||d node / d(dy, dx)||_2`` -- the gradient with respect to the sampling location, which equals the
  gradient with respect to its offset. Points with non-zero weight are placed where they sample. For a
  detection: the same for the bins of its deformable (PS) RoI pooling ("effective bin locations"), with
  the gradient taken with respect to the bin's position in feature cells.
- **Effective receptive field:** ``|d node / d input|`` summed over the colour channels, at the
  network-input resolution.
- **Error-bounded saliency region:** the smallest image region that gives the node's response within a
  relative error bound (default 10 %) when the rest of the image is replaced by the mean pixel, found by
  progressive masking (:func:`saliency_region` documents the search).

Gradients come from one forward WITH autograd (not inference mode): the offsets, masks and outputs of the
deformable layers are taken from the autograd graph by forward hooks (:func:`dcnviz.models.hooks.recording`),
so ``d node / d offset`` is the total derivative, through every path (including the offset convs of the
layers above). They are exactly what the layers' own backward computes: for a DCNv1 layer (``dcnviz.ops``)
zero outside the map and in its clamped edge band, and one-sided at integer coordinates.

Coordinates follow :mod:`dcnviz.analysis.sampling`: tap k = i*kw + j of output position p of a layer
samples its input map at ``p*stride - pad + (i, j)*dilation + (dy, dx)`` (cells, integers at cell
centres); image positions are ``(position + 0.5) * s / scale`` in original-image pixels, written (x, y),
with s the feature stride of the layer's input map, inferred from the shapes as
``round(network input size / map size)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from dcnviz.analysis._common import split_offset, tap_grid
from dcnviz.analysis.coords import feature_to_image
from dcnviz.analysis.sampling import LayerGeometry, inside_rule

__all__ = ["Node", "LayerGradient", "RoIGradient", "NodeGradients", "EffectivePoints", "EffectiveBins",
           "SaliencyRegion", "node_gradients", "effective_sampling_locations", "effective_bin_locations",
           "effective_receptive_field", "saliency_region", "feature_stride", "layer_geometry"]


@dataclass(frozen=True)
class Node:
    """A unit node (``layer``, ``cell`` (i, j) of its output map, optional ``channel``) or a detection
    node (``roi`` [x1, y1, x2, y2] in network-input pixels, inclusive corners as the RoI pooling takes
    them, and ``class_index``, 1.. for an object class)."""

    layer: str | None = None
    cell: tuple[int, int] | None = None
    channel: int | None = None
    roi: tuple[float, float, float, float] | None = None
    class_index: int | None = None

    def __post_init__(self):
        unit = self.layer is not None and self.cell is not None
        detection = self.roi is not None and self.class_index is not None
        if unit == detection:
            raise ValueError("a node is either a unit (layer and cell) or a detection (roi and class_index)")

    @property
    def is_detection(self) -> bool:
        return self.roi is not None


@dataclass(frozen=True)
class LayerGradient:
    """One deformable layer's part of a node's gradient. ``offset`` and ``grad`` (G, K, 2, Ho, Wo) with
    last-but-two axis (dy, dx); ``mask`` (G, K, Ho, Wo) or None; ``input_size`` (H, W) of the layer's
    input map, ``input_stride`` its feature stride (network-input pixels per cell); ``boundary`` the
    layer's rule ("dcnv1"/"dcnv2", :mod:`dcnviz.models.hooks`)."""

    name: str
    geometry: LayerGeometry
    boundary: str
    input_size: tuple[int, int]
    input_stride: float
    offset: np.ndarray
    grad: np.ndarray
    mask: np.ndarray | None


@dataclass(frozen=True)
class RoIGradient:
    """The detection's RoI ([batch, x1, y1, x2, y2], network-input pixels), its class's offsets of the
    deformable PS RoI pooling ``offset`` (2C, part, part) with their gradient ``grad`` (same shape)."""

    roi: np.ndarray
    offset: np.ndarray
    grad: np.ndarray


@dataclass(frozen=True)
class NodeGradients:
    """Result of :func:`node_gradients` for one node: its ``value``; ``input_grad`` (C, H, W) the gradient
    with respect to the network input; ``layers`` the deformable layers from the node's layer down
    (node layer first; for a detection the top ``levels`` layers); ``roi`` for a detection with
    deformable PS RoI pooling."""

    node: Node
    value: float
    input_grad: np.ndarray
    layers: list[LayerGradient]
    roi: RoIGradient | None = None


def feature_stride(net_size: tuple[int, int], map_size: tuple[int, int]) -> float:
    """A map's feature stride inferred from the shapes: the mean of network input size / map size over
    both axes, rounded to an integer when >= 1 (a 300x400 input and a 19x25 map: 16)."""
    s = (net_size[0] / map_size[0] + net_size[1] / map_size[1]) / 2
    return float(round(s)) if s >= 1 else s


def layer_geometry(call) -> LayerGeometry:
    """:class:`LayerGeometry` of a recorded call (:class:`dcnviz.models.hooks.LayerCall`): kernel from the
    weight, stride/padding/dilation from the module, deformable groups from the offset channels."""
    m = call.module
    return LayerGeometry(call.kernel_size, m.dilation, m.padding, m.stride, call.deformable_groups)


def node_gradients(probe, data: torch.Tensor, nodes: Sequence[Node], levels: int = 3) -> list[NodeGradients]:
    """The gradients of every node with respect to the network input and to the offsets of the deformable
    layers at or below it (``levels`` of them, node layer first), from one forward with autograd.

    Args:
        probe: :class:`dcnviz.models.hooks.Probe` of the model (in eval mode; any dtype/device).
        data: the preprocessed network input (1, 3, H, W).
        nodes: all unit nodes or all detection nodes (one forward serves them all).
        levels: deformable layers per node, counted down from the node's layer in call order (fewer when
            fewer exist below it).
    """
    from dcnviz.models.hooks import run_until

    nodes = list(nodes)
    if not nodes:
        return []
    detection = nodes[0].is_detection
    if any(n.is_detection != detection for n in nodes):
        raise ValueError("nodes must be all units or all detections")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    param = next(iter(probe.layers.values())).weight
    x = data.detach().to(param.device, param.dtype).requires_grad_(True)
    with torch.enable_grad():
        if detection:
            if probe.head is None:
                raise ValueError("this model has no detection head")
            rois = torch.tensor([[0.0, *n.roi] for n in nodes], dtype=x.dtype, device=x.device)
            out, calls = run_until(lambda d: probe.head(d, rois), x, probe.layers)
        else:
            tops = {n.layer for n in nodes}
            unknown = tops - set(probe.layers)
            if unknown:
                raise ValueError(f"no deformable layer {sorted(unknown)[0]!r}; the layers are {', '.join(probe.layers)}")
            out, calls = run_until(probe.forward, x, probe.layers, tops.pop() if len(tops) == 1 else None)
    names = [c.name for c in calls]
    if len(set(names)) != len(names):
        raise ValueError("a deformable layer ran more than once in one forward; its node is ambiguous")
    net_size = tuple(x.shape[-2:])
    results = []
    for k, node in enumerate(nodes):
        with torch.enable_grad():
            if detection:
                top = len(calls) - 1
                value = out["cls_score"][k, node.class_index]
                roi_offset = out.get("rfcn_cls_offset") if probe.parts is not None else None
            else:
                top = names.index(node.layer)
                output = calls[top].output
                i, j = node.cell
                if not (0 <= i < output.shape[-2] and 0 <= j < output.shape[-1]):
                    raise ValueError(f"cell {node.cell} is outside {node.layer}'s {output.shape[-2]}x{output.shape[-1]} map")
                value = output[0, :, i, j].sum() if node.channel is None else output[0, node.channel, i, j]
                roi_offset = None
            chosen = calls[max(top - levels + 1, 0):top + 1][::-1]
            inputs = [x] + [c.offset for c in chosen] + ([roi_offset] if roi_offset is not None else [])
            grads = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
        layers = []
        for call, g in zip(chosen, grads[1:1 + len(chosen)]):
            geom = layer_geometry(call)
            kh, kw = geom.kernel_size
            G = geom.deformable_groups
            as_np = lambda t: t[0].detach().to("cpu", torch.float64).numpy()  # noqa: E731
            mask = None if call.mask is None else as_np(call.mask).reshape((G, kh * kw) + tuple(call.mask.shape[-2:]))
            field = lambda t: split_offset(as_np(t), call.name, kh, kw, G).reshape(  # noqa: E731
                (G, kh * kw, 2) + tuple(t.shape[-2:]))
            in_size = tuple(call.input.shape[-2:])
            layers.append(LayerGradient(call.name, geom, call.boundary, in_size, feature_stride(net_size, in_size),
                                        field(call.offset), field(g), mask))
        roi = None
        if roi_offset is not None:
            roi = RoIGradient(np.array([0.0, *node.roi]), roi_offset[k].detach().double().cpu().numpy(),
                              grads[-1][k].detach().double().cpu().numpy())
        results.append(NodeGradients(node, float(value.detach()), grads[0][0].detach().double().cpu().numpy(),
                                     layers, roi))
    return results


@dataclass(frozen=True)
class EffectivePoints:
    """The effective sampling locations of one layer, M points (position, tap, group).

    cells: int (M, 2) output position (i, j); taps: int (M,) k = i*kw + j; groups: int (M,);
    yx: (M, 2) where they sample, (y, x) in cells of the layer's input map; xy: (M, 2) the same in
    original-image pixels (x, y); weight: (M,) ``||d node / d(dy, dx)||_2``; inside: (M,) bool, by the
    layer's boundary rule; mask: (M,) the modulation scalar of a modulated layer, else None."""

    layer: str
    boundary: str
    cells: np.ndarray
    taps: np.ndarray
    groups: np.ndarray
    yx: np.ndarray
    xy: np.ndarray
    weight: np.ndarray
    inside: np.ndarray
    mask: np.ndarray | None


def _layer_points(lg: LayerGradient, scale: float, keep: np.ndarray) -> EffectivePoints:
    """Points of ``lg`` where ``keep`` (G, K, Ho, Wo) is True, ordered by position, then group, then tap."""
    geom = lg.geometry
    regular = tap_grid(*geom.kernel_size, *geom.dilation) - np.asarray(geom.padding, np.float64)  # (K, 2)
    order = keep.transpose(2, 3, 0, 1)  # (Ho, Wo, G, K): position-major
    i, j, g, k = np.nonzero(order)
    cells = np.stack([i, j], -1)
    off = lg.offset[g, k, :, i, j]  # (M, 2) (dy, dx)
    yx = cells * np.asarray(geom.stride, np.float64) + regular[k] + off
    weight = np.hypot(lg.grad[g, k, 0, i, j], lg.grad[g, k, 1, i, j])
    xy = feature_to_image(yx, scale, lg.input_stride)[..., ::-1] if len(yx) else np.zeros((0, 2))
    return EffectivePoints(lg.name, lg.boundary, cells, k, g, yx, xy, weight,
                           inside_rule(yx, lg.input_size, lg.boundary),
                           None if lg.mask is None else lg.mask[g, k, i, j])


def effective_sampling_locations(grads: NodeGradients, scale: float) -> list[EffectivePoints]:
    """Per layer of ``grads`` (node layer first), its sampling points with non-zero weight; for a unit
    node, the node layer's points are ALL taps of the unit's cell, in tap order (k = i*kw + j) within
    each group, zero weights included. ``scale`` is the image's resize factor (``Prep.scale``)."""
    out = []
    for level, lg in enumerate(grads.layers):
        weight = np.hypot(lg.grad[:, :, 0], lg.grad[:, :, 1])  # (G, K, Ho, Wo)
        keep = weight > 0
        if level == 0 and not grads.node.is_detection:
            keep = np.zeros_like(keep)
            keep[:, :, grads.node.cell[0], grads.node.cell[1]] = True
        out.append(_layer_points(lg, scale, keep))
    return out


@dataclass(frozen=True)
class EffectiveBins:
    """The effective bin locations of a detection: ``bins`` (P, P, 4) the bins of its deformable PS RoI
    pooling where they pool, ``[x1, y1, x2, y2]`` continuous edges in original-image pixels
    (:class:`dcnviz.analysis.RoIParts`); ``weight`` (P, P) ``||d score / d(bin position)||_2`` with the
    position in feature cells (a part shared by several bins gives each of them its weight); ``roi``
    (4,) the RoI as pooled."""

    roi: np.ndarray
    bins: np.ndarray
    weight: np.ndarray


def effective_bin_locations(grads: NodeGradients, scale: float, parts) -> EffectiveBins:
    """The bins of a detection node's deformable PS RoI pooling with their weights.

    A bin moves by ``offset * trans_std * roi_size`` (feature cells), so the gradient with respect to its
    position is the offset gradient divided by ``trans_std * roi_size``, per axis. ``parts`` is the head's
    :class:`~dcnviz.models.rfcn.PartGeometry`."""
    from dcnviz.analysis.parts import roi_parts

    if grads.roi is None:
        raise ValueError("the node is not a detection of a model with deformable PS RoI pooling")
    c = grads.node.class_index
    placed = roi_parts(grads.roi.roi, grads.roi.offset, c, scale=scale, spatial_scale=parts.spatial_scale,
                       pooled_size=parts.pooled_size, part_size=parts.part_size, trans_std=parts.trans_std)
    roi_cells = (placed.roi[2:] - placed.roi[:2]) * scale * parts.spatial_scale  # (w, h) in feature cells
    gx = grads.roi.grad[2 * c] / (parts.trans_std * roi_cells[0])
    gy = grads.roi.grad[2 * c + 1] / (parts.trans_std * roi_cells[1])
    P = parts.pooled_size
    part = np.minimum(np.floor(np.arange(P) / P * parts.part_size).astype(int), parts.part_size - 1)
    weight = np.hypot(gx, gy)[part[:, None], part[None, :]]
    return EffectiveBins(placed.roi, placed.bins, weight)


def effective_receptive_field(grads: NodeGradients) -> np.ndarray:
    """``|d node / d input|`` summed over the input's colour channels: (H, W) float64 at the network-input
    resolution (input pixel (y, x) is original pixel (y, x) / scale)."""
    return np.abs(grads.input_grad).sum(axis=0)


@dataclass(frozen=True)
class SaliencyRegion:
    """Result of :func:`saliency_region`.

    mask: bool (H, W) network-input pixels kept (the rest set to the mean pixel); cells: the number of
    cells kept, out of ``total_cells`` of ``cell_size`` px; area: kept network-input pixels; response:
    the node on the whole image, region_response: on the masked image, error: their relative
    difference; bound: the error bound; evaluations: forwards run (batched)."""

    mask: np.ndarray
    cells: int
    total_cells: int
    cell_size: int
    area: int
    response: float
    region_response: float
    error: float
    bound: float
    evaluations: int

    def image_area(self, scale: float) -> float:
        """The region's area in original-image pixels (network-input pixels / scale**2)."""
        return self.area / scale ** 2


def _responses(probe, data: torch.Tensor, node: Node, masks: torch.Tensor) -> torch.Tensor:
    """The node on ``data`` with each of ``masks`` (B, 1, H, W) applied: kept pixels as they are, the rest
    set to ``probe.fill``. (B,) float64."""
    from dcnviz.models.hooks import run_until

    fill = torch.tensor(probe.fill, dtype=data.dtype, device=data.device)[None, :, None, None]
    batch = data * masks + fill * (1 - masks)
    if node.is_detection:
        rois = torch.tensor([[b, *node.roi] for b in range(len(batch))], dtype=data.dtype, device=data.device)
        return probe.head(batch, rois)["cls_score"][:, node.class_index].double()
    _, calls = run_until(probe.forward, batch, {node.layer: probe.layers[node.layer]}, node.layer)
    out = calls[0].output[:, :, node.cell[0], node.cell[1]]
    return (out.sum(1) if node.channel is None else out[:, node.channel]).double()


def saliency_region(probe, data: torch.Tensor, node: Node, ranking: np.ndarray, *, bound: float = 0.1,
                    cell: int = 16, batch: int = 8) -> SaliencyRegion:
    """The error-bounded saliency region of ``node``: the smallest region whose masked image keeps the node
    within ``bound`` (relative) of its response on the whole image, the rest set to the mean pixel.

    The search (progressive masking over a ranking of cells):

    1. The network input is cut into square cells of ``cell`` x ``cell`` pixels (the last row and column
       of cells may be smaller).
    2. Cells are ranked by the total of ``ranking`` (H, W) inside them, largest first (ties in row-major
       order); the CLI ranks by the effective receptive field, so the most influential cells come first.
    3. Candidate regions are the prefixes of that ranking: the first k cells, k = 1..N. The image with
       every cell outside a prefix set to the mean pixel (``probe.fill``) is run through the network.
    4. The smallest k within the bound is searched for by a ``batch``-ary search on k in (0, N] (N, the
       whole image, is within any bound): each round evaluates ``batch`` evenly spaced k of the interval
       in one batched forward and keeps the sub-interval below the first k within the bound. This finds
       the smallest such k when the error falls with k; in every case the returned region is within the
       bound and the next smaller k the search evaluated is not.

    Relative error: ``|f(region) - f(image)| / |f(image)|``, with f(image) computed in the same batched
    forward (a zero response requires an exact match). ``data``: (1, 3, H, W) network input.
    """
    if not 0 <= bound:
        raise ValueError(f"bound must be >= 0, got {bound}")
    if cell < 1 or batch < 1:
        raise ValueError(f"cell and batch must be >= 1, got {cell} and {batch}")
    h, w = data.shape[-2:]
    ranking = np.asarray(ranking, np.float64)
    if ranking.shape != (h, w):
        raise ValueError(f"ranking must have the network input's shape {(h, w)}, got {ranking.shape}")
    rows, cols = -(-h // cell), -(-w // cell)
    padded = np.zeros((rows * cell, cols * cell))
    padded[:h, :w] = ranking
    totals = padded.reshape(rows, cell, cols, cell).sum(axis=(1, 3)).reshape(-1)
    order = np.argsort(-totals, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    rank_px = np.kron(rank.reshape(rows, cols), np.ones((cell, cell), np.int64))[:h, :w]
    n = rows * cols
    param = next(iter(probe.layers.values())).weight
    data = data.detach().to(param.device, param.dtype)
    rank_t = torch.from_numpy(rank_px).to(data.device)

    def masks(ks) -> torch.Tensor:
        return torch.stack([(rank_t < k) for k in ks])[:, None].to(data.dtype)

    evaluations = 0
    with torch.no_grad():
        reference = float(_responses(probe, data, node, masks([n]))[0])
        evaluations += 1
        tolerance = bound * abs(reference)
        lo, hi, best = 0, n, (n, reference)  # k = lo is known to miss the bound (or is 0), k = hi meets it
        while hi - lo > 1:
            step = (hi - lo) / (batch + 1)
            ks = sorted({min(max(lo + round(step * (t + 1)), lo + 1), hi - 1) for t in range(batch)})
            values = _responses(probe, data, node, masks(ks)).tolist()
            evaluations += len(ks)
            passing = [(k, v) for k, v in zip(ks, values) if abs(v - reference) <= tolerance]
            if passing:
                k, v = passing[0]
                hi, best = k, (k, v)
                lo = max([lo] + [kk for kk in ks if kk < k])
            else:
                lo = ks[-1]
    k, value = best
    mask = rank_px < k
    error = abs(value - reference) / abs(reference) if reference else float(value != reference)
    return SaliencyRegion(mask, k, n, cell, int(mask.sum()), reference, value, error, bound, evaluations)
