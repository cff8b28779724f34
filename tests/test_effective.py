"""DCNv2's effective views (dcnviz.analysis.effective): gradients against finite differences in float64, the
regular grid of a layer with zero offsets, modulated (torchvision) layers, and the saliency search on a
case whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import tiny_models
from dcnviz.analysis.effective import (Node, effective_bin_locations, effective_receptive_field,
                                       effective_sampling_locations, node_gradients, saliency_region)
from dcnviz.models.capture import probe as model_probe
from dcnviz.models.hooks import Probe, deformable_modules, recording, register_deformable_layer, run_until
from dcnviz.ops import DeformConv2d

EPS = 1e-6


@pytest.fixture(scope="module")
def tiny():
    """The tiny deformable R-FCN (4 groups, deformable PS RoI pooling) in float64, offsets of a few cells."""
    return tiny_models.rfcn("rfcn_dcn", seed=3).double()


@pytest.fixture(scope="module")
def tiny_data():
    g = torch.Generator().manual_seed(0)
    return 40 * torch.randn((1, 3, 64, 96), generator=g, dtype=torch.float64)


def unit_value(probe, data, node, perturb=None) -> float:
    """The node's value, with ``perturb(name, offset) -> offset`` applied to every layer's offset input."""
    handles = []
    if perturb is not None:
        for name, module in probe.layers.items():
            def pre(mod, args, name=name):
                return (args[0], perturb(name, args[1]), *args[2:])
            handles.append(module.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            _, calls = run_until(probe.forward, data, probe.layers, node.layer)
    finally:
        for h in handles:
            h.remove()
    out = [c for c in calls if c.name == node.layer][0].output[0, :, node.cell[0], node.cell[1]]
    return float(out.sum() if node.channel is None else out[node.channel])


def test_offset_gradients_match_finite_differences(tiny, tiny_data):
    probe = model_probe(tiny)
    node = Node("res5b", (2, 3), channel=5)
    grads = node_gradients(probe, tiny_data, [node], levels=2)[0]
    assert [lg.name for lg in grads.layers] == ["res5b", "res5a"]
    rng = np.random.default_rng(1)
    checked = 0
    for lg in grads.layers:
        G, K, _, ho, wo = lg.grad.shape
        big = np.argwhere(np.abs(lg.grad) > 1e-3 * np.abs(lg.grad).max())
        for g, k, axis, i, j in big[rng.choice(len(big), size=min(6, len(big)), replace=False)]:
            channel = g * 2 * K + 2 * k + axis  # the official layout: dy at 2k, dx at 2k + 1 per group

            def shift(delta):
                def perturb(name, offset):
                    if name != lg.name:
                        return offset
                    offset = offset.clone()
                    offset[0, channel, i, j] += delta
                    return offset
                return perturb

            fd = (unit_value(probe, tiny_data, node, shift(EPS)) - unit_value(probe, tiny_data, node, shift(-EPS))) / (2 * EPS)
            assert fd == pytest.approx(lg.grad[g, k, axis, i, j], rel=1e-5, abs=1e-9)
            checked += 1
    assert checked >= 8
    # the node layer's own offsets matter at the node's cell only
    top = grads.layers[0].grad
    elsewhere = np.ones(top.shape[-2:], bool)
    elsewhere[2, 3] = False
    assert np.count_nonzero(top[..., elsewhere]) == 0 and np.count_nonzero(top[..., 2, 3]) > 0


def test_input_gradient_matches_finite_differences(tiny, tiny_data):
    probe = model_probe(tiny)
    node = Node("res5a", (1, 2))
    grads = node_gradients(probe, tiny_data, [node], levels=1)[0]
    erf = effective_receptive_field(grads)
    assert erf.shape == (64, 96) and erf.dtype == np.float64
    assert np.allclose(erf, np.abs(grads.input_grad).sum(0))
    for c, y, x in [(0, 20, 30), (2, 25, 40), (1, 10, 44)]:
        plus, minus = tiny_data.clone(), tiny_data.clone()
        plus[0, c, y, x] += EPS
        minus[0, c, y, x] -= EPS
        fd = (unit_value(probe, plus, node) - unit_value(probe, minus, node)) / (2 * EPS)
        assert fd == pytest.approx(grads.input_grad[c, y, x], rel=1e-5, abs=1e-9)
    assert grads.value == pytest.approx(unit_value(probe, tiny_data, node), rel=1e-12)


def test_bin_gradients_match_finite_differences(tiny, tiny_data, monkeypatch):
    import dcnviz.models.rfcn as rfcn

    probe = model_probe(tiny)
    node = Node(roi=(12.0, 8.0, 70.0, 50.0), class_index=2)
    grads = node_gradients(probe, tiny_data, [node], levels=2)[0]
    assert [lg.name for lg in grads.layers] == ["res5b", "res5a"]
    original = rfcn.deform_psroi_pool
    c = node.class_index
    P = probe.parts.pooled_size
    for p, q in [(0, 0), (3, 4), (6, 2)]:
        values = []
        for delta in (EPS, -EPS):
            def pool(input, rois, offset=None, **kw):
                if offset is not None and kw["output_dim"] == tiny.head.num_classes:
                    offset = offset.clone()
                    offset[0, 2 * c, p, q] += delta  # dx of the class's part (p, q)
                return original(input, rois, offset, **kw)
            monkeypatch.setattr(rfcn, "deform_psroi_pool", pool)
            with torch.no_grad():
                values.append(float(probe.head(tiny_data, torch.tensor([[0.0, *node.roi]], dtype=torch.float64))
                                    ["cls_score"][0, c]))
        monkeypatch.setattr(rfcn, "deform_psroi_pool", original)
        assert (values[0] - values[1]) / (2 * EPS) == pytest.approx(grads.roi.grad[2 * c, p, q], rel=1e-5, abs=1e-9)
    bins = effective_bin_locations(grads, 1.0, probe.parts)
    assert bins.bins.shape == (P, P, 4) and bins.weight.shape == (P, P)
    # position gradient = offset gradient / (trans_std * RoI size in feature cells), per axis
    roi_cells = (bins.roi[2:] - bins.roi[:2]) * probe.parts.spatial_scale
    expected = np.hypot(grads.roi.grad[2 * c] / (0.1 * roi_cells[0]), grads.roi.grad[2 * c + 1] / (0.1 * roi_cells[1]))
    assert np.allclose(bins.weight, expected)
    assert (bins.weight > 0).sum() > P * P // 2


class OneLayer(nn.Module):
    """One deformable layer whose offsets come from a conv with zero weights (zero offsets, in the graph)."""

    def __init__(self, layer: nn.Module, groups: int = 1, modulated: bool = False):
        super().__init__()
        kh, kw = layer.weight.shape[-2:]
        self.layer = layer
        self.offset = nn.Conv2d(layer.weight.shape[1], 2 * groups * kh * kw, 3, 1, 1)
        self.mask = nn.Conv2d(layer.weight.shape[1], groups * kh * kw, 3, 1, 1) if modulated else None
        with torch.no_grad():
            for conv in filter(None, (self.offset, self.mask)):
                conv.weight.zero_()
                conv.bias.zero_()
            layer.weight.fill_(1.0)

    def forward(self, x):
        offset = self.offset(x)
        if self.mask is None:
            return self.layer(x, offset)
        return self.layer(x, offset, 0.5 + 0 * self.mask(x))  # a constant mask of 0.5, in the graph


def ramp(h: int, w: int, channels: int = 2) -> torch.Tensor:
    """An input whose gradient is the same everywhere: value = 0.5 x + 0.25 y in every channel."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return (0.5 * x + 0.25 * y).expand(1, channels, h, w).clone()


@pytest.mark.parametrize("dilation,groups", [(1, 1), (2, 2)])
def test_zero_offsets_give_the_regular_grid_with_equal_weights(dilation, groups):
    layer = DeformConv2d(2, 3, 3, 1, dilation, dilation, deformable_groups=groups).double()
    net = OneLayer(layer, groups).double()
    probe = Probe({"dcn": layer}, net)
    data = ramp(12, 14)
    node = Node("dcn", (5, 6))
    grads = node_gradients(probe, data, [node], levels=3)[0]
    (points,) = effective_sampling_locations(grads, scale=1.0)
    K = 9
    assert len(points.weight) == groups * K
    assert points.taps.tolist() == list(range(K)) * groups and points.groups.tolist() == np.repeat(range(groups), K).tolist()
    i, j = np.divmod(np.arange(K), 3)
    grid = np.stack([5 - dilation + i * dilation, 6 - dilation + j * dilation], -1).astype(float)
    assert np.array_equal(points.yx, np.tile(grid, (groups, 1)))
    assert np.allclose(points.xy, (np.tile(grid, (groups, 1))[:, ::-1] + 0.5) * 1.0)  # stride 1, scale 1
    # each tap: sum over the 3 filters and its group's channels of the ramp's gradient (0.25, 0.5)
    per_tap = 3 * (2 // groups) * np.hypot(0.25, 0.5)
    assert np.allclose(points.weight, per_tap)
    assert points.inside.all() and points.mask is None
    # the receptive field is the grid itself: 3 filters x 1 per channel, summed over 2 channels
    erf = effective_receptive_field(grads)
    expected = np.zeros((12, 14))
    expected[grid[:, 0].astype(int), grid[:, 1].astype(int)] = 3 * 2  # 3 filters, 2 channels
    assert np.allclose(erf, expected)


def test_torchvision_modulated_layer():
    layer = torchvision.ops.DeformConv2d(2, 3, 3, 1, 1, bias=False).double()
    net = OneLayer(layer, modulated=True).double()
    probe = Probe(deformable_modules(net), net)
    assert list(probe.layers) == ["layer"]
    grads = node_gradients(probe, ramp(10, 10), [Node("layer", (0, 4))], levels=1)[0]
    (points,) = effective_sampling_locations(grads, scale=2.0)
    assert grads.layers[0].boundary == "dcnv2"
    assert np.allclose(points.mask, 0.5)
    # the mask scales every sample, and so its gradient; taps in row -1 are outside the map
    top_row = points.yx[:, 0] < 0
    assert top_row.sum() == 3 and not points.inside[top_row].any() and points.inside[~top_row].all()
    assert np.allclose(points.weight[~top_row], 0.5 * 3 * 2 * np.hypot(0.25, 0.5))
    # at y = -1 the sample reads zero, but torchvision's backward takes the one-sided derivative toward
    # the map: d/dy of (y + 1) * value(row 0) = value(row 0) = 0.5 * column of the ramp
    assert np.allclose(points.weight[top_row], 0.5 * 3 * 2 * 0.5 * points.yx[top_row, 1])
    assert np.allclose(points.xy, (points.yx[:, ::-1] + 0.5) / 2.0)


def test_registration_and_recording():
    class Custom(nn.Module):
        weight = torch.zeros(1, 1, 1, 1)
        stride = padding = 0
        dilation = 1

        def forward(self, x, offsets):
            return x * 2

    with pytest.raises(TypeError):
        with recording({"c": Custom()}):
            pass
    register_deformable_layer(Custom, boundary="dcnv1", read=lambda m, args, kw: (args[0], args[1], None))
    module = Custom()
    with recording({"c": module}) as calls:
        module(torch.ones(1, 1, 2, 2), torch.zeros(1, 2, 2, 2))
    assert [c.name for c in calls] == ["c"] and calls[0].boundary == "dcnv1" and calls[0].output.sum() == 8
    assert not module._forward_hooks and not module._forward_pre_hooks
    with pytest.raises(ValueError):
        register_deformable_layer(Custom, boundary="v3")


class PooledSum(nn.Module):
    """A node that adds up the image over a known block of 16-px cells: the image is averaged over 16x16
    cells, and a deformable 3x3 conv with unit weights and zero offsets sums the 3x3 cells around its own."""

    def __init__(self):
        super().__init__()
        self.net = OneLayer(DeformConv2d(3, 1, 3, 1, 1, 1))

    def forward(self, x):
        return self.net(F.avg_pool2d(x, 16))


@pytest.mark.parametrize("bound,cells", [(0.1, 9), (0.12, 8), (0.34, 6), (0.0, 9)])
def test_saliency_region_known_answer(bound, cells):
    model = PooledSum().double()
    probe = Probe({"dcn": model.net.layer}, model, fill=(0.0, 0.0, 0.0))
    data = torch.ones(1, 3, 96, 128, dtype=torch.float64)
    node = Node("dcn", (2, 3))  # sums cells rows 1..3, columns 2..4: each of the 9 gives 1/9 of the response
    grads = node_gradients(probe, data, [node])[0]
    region = saliency_region(probe, data, node, effective_receptive_field(grads), bound=bound, cell=16, batch=4)
    assert region.cells == cells and region.total_cells == 6 * 8
    assert region.area == cells * 256 and region.image_area(0.5) == cells * 256 * 4
    assert region.error == pytest.approx(1 - cells / 9) and region.error <= bound
    block = np.zeros((96, 128), bool)
    block[16:64, 32:80] = True
    assert not (region.mask & ~block).any()  # only cells of the block are kept
    assert region.response == pytest.approx(9 * 3)
    assert region.evaluations < region.total_cells


def test_drawing():
    from dcnviz.viz.effective import backdrop, draw_heatmap, draw_region, draw_weighted_points, jet

    image = np.full((40, 60, 3), 100, np.uint8)
    xy = np.array([[10.5, 10.5], [30.2, 20.9], [50.0, 30.0]])
    out = draw_weighted_points(backdrop(image), xy, [1.0, 0.0, 0.5], opacity=[1.0, 1.0, 0.5])
    base = backdrop(image)
    assert tuple(out[10, 10]) == tuple(jet([1.0])[0])  # the strongest point: opaque, top of the scale
    assert tuple(out[20, 30]) == tuple(base[20, 30])  # zero weight: not drawn
    assert tuple(out[30, 50]) != tuple(base[30, 50])  # weaker and half transparent: blended
    assert tuple(out[30, 50]) != tuple(jet([0.5])[0])
    heat = np.zeros((40, 60))
    heat[5, 7] = 2.0
    shown = draw_heatmap(image, heat)
    assert tuple(shown[5, 7]) != tuple(base[5, 7]) and tuple(shown[30, 40]) == tuple(base[30, 40])
    mask = np.zeros((40, 60), bool)
    mask[:10, :10] = True
    region = draw_region(image, mask)
    assert (region[:10, :10] == 100).all() and (region[10:, :] == 25).all()


def test_drawing_styles_and_vector_views():
    """--marker-alpha blends the weighted markers, the default style rims them in black and the paper style
    does not; effective_views gives the same marks as vector shapes (one SVG marker per positive weight) over the pictures
    without them."""
    from cli_helpers import svg_markers
    from dcnviz.viz.effective import backdrop, draw_heatmap, draw_weighted_points, effective_views, jet
    from dcnviz.viz.sampling import get_style
    from dcnviz.viz.vector import GID, vector_figure

    image = np.full((40, 60, 3), 100, np.uint8)
    base = backdrop(image)
    xy, weight = np.array([[10.5, 10.5], [40.2, 20.9]]), np.array([1.0, 0.0])
    top = jet([1.0])[0].astype(np.float64)
    half = 2  # marker_half of a 40x60 image, less one for a lower layer: 1 px; the rim one more
    faint = draw_weighted_points(base, xy, weight, look=get_style("paper", 0.5))
    assert tuple(faint[10, 10]) == tuple(np.round(base[10, 10] * 0.5 + top * 0.5).astype(np.uint8))
    assert tuple(faint[10, 10 + half]) == tuple(base[10, 10 + half])  # no rim in the paper style
    rimmed = draw_weighted_points(base, xy, weight)
    assert tuple(rimmed[10, 10]) == tuple(jet([1.0])[0]) and tuple(rimmed[10, 10 + half]) == (0, 0, 0)
    heat, region = np.zeros((40, 60)), np.zeros((40, 60), bool)
    layers = [(xy, weight, None), (np.array([[5.0, 5.0], [20.0, 30.0], [50.0, 35.0]]), np.array([0.2, 0.4, 0.0]),
                                   np.array([1.0, 0.5, 1.0]))]
    pictures, panels = effective_views(image, layers, heat, region, ["a", "b", "c"], unit_xy=(30.0, 20.0))
    assert len(pictures) == len(panels) == 3 and [p.title for p in panels] == ["a", "b", "c"]
    assert all(tuple(p[20, 30]) == (0, 255, 0) for p in pictures)  # the unit on every view
    assert np.array_equal(panels[0].image, base) and np.array_equal(panels[1].image, draw_heatmap(image, heat))
    svg = vector_figure(panels, "svg", columns=3)
    assert svg_markers(svg, GID["weighted"]) == 1 + 2  # positive weights only
