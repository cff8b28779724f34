"""The pieces behind the analysis commands: unit choice (dcnviz.analysis.units), RoI parts against the
compiled operator (dcnviz.analysis.parts), the layer stack and offset capture (dcnviz.models.capture), and
the drawings (dcnviz.viz.sampling, dcnviz.viz.plots)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import tiny_models
from dcnviz.analysis.parts import pool_offsets, roi_parts
from dcnviz.analysis.units import pick_units, segment_boxes, units_at
from dcnviz.models.capture import capture_offsets, layer_stack, short_name, twin_convs
from dcnviz.ops import deform_psroi_pool
from dcnviz.viz.plots import dilation_histogram
from dcnviz.viz.sampling import (GREEN, RED, YELLOW, draw_roi_parts, draw_sampling_points, get_style,
                                 marker_half, montage)


class TestUnits:
    # a 19x25 map of stride 16 on a 400x300 image at scale 1: cell (i, j) centred at (16j + 8, 16i + 8)
    ARGS = dict(map_size=(19, 25), scale=1.0, stride=16, image_size=(300, 400))

    def test_large_small_and_background(self):
        boxes = [[0, 0, 49, 49], [100, 60, 349, 279], [300, 10, 399, 39]]  # areas 2500, 55000, 3000
        units = {u.kind: u for u in pick_units(boxes, **self.ARGS)}
        assert list(units) == ["background", "small", "large"]
        # large: centre (225, 170) -> cell (10, 14); small (the smallest box): centre (25, 25) -> cell (1, 1)
        assert (units["large"].cell, units["large"].xy, units["large"].bucket) == ((10, 14), (232.0, 168.0), "large")
        assert (units["small"].cell, units["small"].box, units["small"].bucket) == ((1, 1), (0, 0, 49, 49), "small")
        # background: the widest free space is the strip left of the large box (x < 100, y >= 50); its column
        # j = 3 (x = 56) is 44 px from that box and 56 from the border, best from y = 104 to 248 (i = 6..15);
        # of those ties the cell nearest the image centre (200, 150) wins: (9, 3) at y = 152
        bg = units["background"]
        assert bg.box is None and bg.cell == (9, 3)

    def test_without_a_small_box_the_smallest_other_one(self):
        units = pick_units([[0, 0, 99, 99], [100, 60, 349, 279]], **self.ARGS, kinds=("small", "large"))
        assert [(u.kind, u.box, u.bucket) for u in units] == [("small", (0, 0, 99, 99), "medium"),
                                                              ("large", (100, 60, 349, 279), "large")]
        assert [u.kind for u in pick_units([[0, 0, 99, 99]], **self.ARGS, kinds=("small", "large"))] == ["large"]

    def test_no_boxes_and_no_free_cell(self):
        (bg,) = pick_units(np.zeros((0, 4)), **self.ARGS)
        assert bg.cell == (9, 12)  # (200, 152): 148 px from the bottom border, nearest the centre (200, 150)
        assert pick_units([[0, 0, 399, 299]], **self.ARGS, kinds=("background",)) == []
        with pytest.raises(ValueError, match="kinds"):
            pick_units([], **self.ARGS, kinds=("huge",))

    def test_units_at(self):
        units = units_at([(0, 0), (399.5, 299.9), (200, 100)], **self.ARGS)
        assert [u.cell for u in units] == [(0, 0), (18, 24), (6, 12)] and units[2].xy == (200.0, 104.0)
        # the map's rounding can leave edge pixels past the last cell: they go to the last cell
        assert units_at([(399, 299)], (18, 24), 1.0, 16, (300, 400))[0].cell == (17, 23)
        with pytest.raises(ValueError, match=r"400,10 is outside the 400x300 image"):
            units_at([(400, 10)], **self.ARGS)

    def test_segment_boxes(self):
        labels = np.zeros((40, 60), np.uint8)
        labels[5:15, 10:30] = 1       # 200 px
        labels[20:35, 40:52] = 1      # a second component of class 1
        labels[30:33, 0:3] = 2        # 9 px: noise
        boxes = segment_boxes(labels, skip=[0], min_pixels=100)
        assert sorted(boxes.tolist()) == [[10, 5, 29, 14], [40, 20, 51, 34]]
        assert len(segment_boxes(labels, skip=[0], min_pixels=9)) == 3
        assert len(segment_boxes(labels, skip=[], min_pixels=100)) == 3  # class 0 is a segment too


class TestRoIParts:
    def test_bins_are_where_the_compiled_operator_samples(self):
        """Pool a map whose value is its own x (or y) coordinate: each bin's mean is the mean of its sample
        positions, start + (S - 1) / (2 S) * bin size (bilinear sampling of a linear map is exact)."""
        h, w, p, s, scale, stride = 20, 30, 3, 4, 0.5, 8
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
        maps = torch.stack([xs, ys]).repeat_interleave(p * p, dim=0)[None]  # output_dim 2: x map, y map
        roi = torch.tensor([[0, 50.4, 33.0, 170.6, 120.0]], dtype=torch.float64)
        offset = torch.randn(1, 2 * 3, p, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        kwargs = dict(spatial_scale=1 / stride, pooled_size=p, part_size=p, trans_std=0.1)
        for c in range(3):
            cls_offset = offset[:, 2 * c:2 * c + 2].repeat(1, 2, 1, 1)  # class c's (dx, dy) for both outputs
            pooled = deform_psroi_pool(maps, roi, cls_offset, output_dim=2, group_size=p, sample_per_part=s,
                                       **kwargs)[0]
            parts = roi_parts(roi[0], offset[0], c, scale=scale, **kwargs)
            feature = parts.bins * scale / stride - 0.5  # image edges -> feature-map coordinates
            bin_w, bin_h = feature[..., 2] - feature[..., 0], feature[..., 3] - feature[..., 1]
            np.testing.assert_allclose(pooled[0].numpy(), feature[..., 0] + bin_w * (s - 1) / (2 * s), atol=1e-9)
            np.testing.assert_allclose(pooled[1].numpy(), feature[..., 1] + bin_h * (s - 1) / (2 * s), atol=1e-9)
        # the RoI as pooled: corners rounded (50, 33, 171, 120), end + 1, divided by the scale
        np.testing.assert_allclose(parts.roi, [100, 66, 344, 242], atol=1e-9)
        np.testing.assert_allclose(parts.regular[0, 0, :2], [100, 66], atol=1e-9)
        np.testing.assert_allclose(parts.regular[-1, -1, 2:], [344, 242], atol=1e-9)

    def test_pool_offsets_to_the_papers_3x3(self):
        offset = np.arange(2 * 7 * 7, dtype=np.float64).reshape(2, 7, 7)
        pooled = pool_offsets(offset, 3)
        # windows rows/columns 0-2, 2-4, 4-6 (floor(7i/3) .. ceil(7(i+1)/3) - 1): overlapping by one
        assert pooled.shape == (2, 3, 3)
        assert pooled[0, 0, 0] == offset[0, 0:3, 0:3].mean() and pooled[1, 1, 2] == offset[1, 2:5, 4:7].mean()
        np.testing.assert_array_equal(pool_offsets(offset, 7), offset)
        with pytest.raises(ValueError, match="parts"):
            pool_offsets(offset, 8)

    def test_bad_arguments(self):
        kwargs = dict(scale=1.0, spatial_scale=1 / 16, pooled_size=3, part_size=3, trans_std=0.1)
        with pytest.raises(ValueError, match="offset must have shape"):
            roi_parts([0, 0, 10, 10], np.zeros((4, 7, 7)), 0, **kwargs)
        with pytest.raises(ValueError, match="class_index"):
            roi_parts([0, 0, 10, 10], np.zeros((4, 3, 3)), 2, **kwargs)
        with pytest.raises(ValueError, match="roi"):
            roi_parts([0, 0, 10], np.zeros((4, 3, 3)), 0, **kwargs)


class TestCapture:
    def test_layer_stack(self):
        model = tiny_models.rfcn("rfcn_dcn")  # res5a, res5b deformable (4 groups)
        assert [short_name(l) for l in layer_stack(model)] == ["res5b", "res5a"]
        assert [l.name for l in layer_stack(model, "res5b_branch2b", 1)] == ["res5b_branch2b"]
        assert [short_name(l) for l in layer_stack(model, "res5a", default_levels=3)] == ["res5a"]
        with pytest.raises(ValueError, match="no deformable layer 'res5c'; its deformable layers are res5a, res5b"):
            layer_stack(model, "res5c")
        with pytest.raises(ValueError, match=r"3 levels from res5b need 3 deformable layers .* 2 \(res5b, res5a\)"):
            layer_stack(model, "res5b", 3)
        with pytest.raises(ValueError, match="no deformable conv layers"):
            layer_stack(tiny_models.rfcn("rfcn"))

    def test_capture_equals_predict(self):
        model = tiny_models.rfcn("deform_conv")
        image = np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8)
        offsets, prep = capture_offsets(model, image)
        det = model.predict(image)
        assert prep == det.prep and set(offsets) == {"res5a_branch2b_offset", "res5b_branch2b_offset"}
        for key, value in offsets.items():
            torch.testing.assert_close(value, det.captured[key], rtol=0, atol=0)

    def test_twin_convs(self):
        layers = tiny_models.rfcn("deform_conv").deformable_layers
        convs = twin_convs(tiny_models.rfcn("rfcn"), layers)
        assert [(c.kernel_size, c.dilation, c.padding) for c in convs] == [((3, 3), (2, 2), (2, 2))] * 2
        with pytest.raises(ValueError, match="res5a is DeformConv2d"):
            twin_convs(tiny_models.rfcn("rfcn_dcn"), layers)


def _contrast(out: np.ndarray, background, at: tuple[int, int], reach: int) -> tuple[float, int]:
    """Around pixel ``at`` (x, y): the largest colour distance from ``background`` and how many pixels
    differ from it by more than CONTRAST."""
    x, y = at
    patch = out[y - reach:y + reach + 1, x - reach:x + reach + 1].astype(np.float64)
    distance = np.linalg.norm(patch - np.asarray(background, np.float64), axis=-1)
    return float(distance.max()), int((distance > CONTRAST).sum())


CONTRAST = 100.0  # colour distance (0..441) that reads as a different colour


class TestDrawing:
    def test_paper_style_is_the_official_look(self):
        image = np.full((120, 160, 3), 90, np.uint8)
        xy = np.array([[20.5, 30.2], [100.9, 80.0], [60.0, 60.0], [-30.0, 500.0]])
        out = draw_sampling_points(image, xy, [True, True, False, True], (140.0, 20.0), look=get_style("paper"))
        assert (image == 90).all() and marker_half(120, 160) == 2
        assert tuple(out[30, 20]) == RED and tuple(out[80, 100]) == RED and tuple(out[32, 22]) == RED  # 5x5
        assert tuple(out[33, 23]) == (90, 90, 90)  # no outline
        assert tuple(out[60, 60]) == (90, 90, 90) and tuple(out[58, 58]) == RED  # hollow: outline only
        assert tuple(out[119, 0]) == RED  # off the image: clamped to the border
        assert tuple(out[20, 140]) == GREEN and tuple(out[24, 144]) == GREEN
        groups = draw_sampling_points(image, np.stack([xy[:2], xy[:2] + 40]), np.ones((2, 2), bool), (0, 0),
                                      look=get_style("paper"))
        assert tuple(groups[30, 20]) == RED and tuple(groups[70, 60]) == (255, 128, 0)

    def test_default_style_outlines_and_a_distinct_unit(self):
        image = np.full((120, 160, 3), 90, np.uint8)
        out = draw_sampling_points(image, [[20.5, 30.2], [60.0, 60.0]], [True, False], (140.0, 60.0),
                                   box=[100, 10, 150, 110])
        assert tuple(out[30, 20]) == RED and out[30, 24].max() < 60  # red inside a dark outline
        assert out[60, 60][2] < 100 and out[60, 62][2] > 200  # hollow: a red ring around a dark centre
        assert tuple(out[60, 140]) == GREEN
        unit = (out == GREEN).all(axis=-1).sum()
        sample = (out[20:41, 10:31] == RED).all(axis=-1).sum()
        assert unit > 4 * sample  # the unit is much larger than a sample
        assert tuple(out[10, 125]) == (255, 255, 255) and tuple(out[30, 100]) == (255, 255, 255)  # object box
        half = marker_half(1200, 1600)
        assert half == 4  # markers grow with the image
        with pytest.raises(ValueError, match="alpha"):
            get_style("default", alpha=0)

    @pytest.mark.parametrize("background", [(0, 0, 255), (255, 255, 255), (0, 0, 0), (0, 200, 0)])
    @pytest.mark.parametrize("alpha", [1.0, 0.6])
    def test_markers_stay_visible_on_any_background(self, background, alpha):
        """A point and the unit drawn on a red, a white, a black and a green patch differ from the patch."""
        image = np.zeros((60, 120, 3), np.uint8)
        image[:] = background
        out = draw_sampling_points(image, [[30.0, 30.0]], [True], (90.0, 30.0), look=get_style(alpha=alpha))
        for at in ((30, 30), (90, 30)):
            largest, count = _contrast(out, background, at, reach=6)
            assert largest > CONTRAST and count >= 8, (at, largest, count)

    def test_the_paper_style_gets_lost_on_red(self):
        """What the default style is for: the official plain red square vanishes on a red patch."""
        image = np.zeros((60, 120, 3), np.uint8)
        image[:] = RED
        out = draw_sampling_points(image, [[30.0, 30.0]], [True], (90.0, 30.0), look=get_style("paper"))
        assert _contrast(out, RED, (30, 30), reach=6)[1] == 0

    def test_roi_parts_and_montage(self):
        image = np.full((100, 150, 3), 200, np.uint8)
        regular = [[[10.0, 40.0, 60.0, 65.0]]]
        out = draw_roi_parts(image, [10.0, 40.0, 110.0, 90.0], [[[20.4, 45.0, 60.0, 70.0]]], "cat 0.87",
                             regular=regular)
        assert tuple(out[89, 109]) == YELLOW and tuple(out[45, 20]) == RED and tuple(out[69, 59]) == RED
        faint = out[64, 30].astype(int)  # the unmoved grid: a light line, only partly opaque
        assert (faint > 200).all() and (faint < 255).any()
        figure, origins = montage([image, out], ["a", "b"], footer="footer")
        left, top = origins[1]
        np.testing.assert_array_equal(figure[top:top + 100, left:left + 150], out)
        np.testing.assert_array_equal(figure[origins[0][1]:origins[0][1] + 100, origins[0][0]:origins[0][0] + 150],
                                      image)
        grid, places = montage([image] * 3, ["a", "b", "c"], columns=2)
        assert places[2][0] == places[0][0] and places[2][1] > places[0][1] + 100

    @pytest.mark.parametrize("size", [(40, 30), (120, 160), (375, 500)])
    def test_captions_never_shrink_below_10_px(self, size):
        """Long titles and footers on small panels wrap; every line of text stays at least 10 px tall."""
        panel = np.zeros((*size, 3), np.uint8)
        title = " ".join(["Hg"] + ["Hxy"] * 12)
        figure, origins = montage([panel, panel], [title, "H"], footer=" ".join(["Hfooter"] * 20))
        top = origins[0][1]
        for region in (figure[:top], figure[top + size[0] + 6:]):  # title strip, footer
            rows = (region > 200).any(axis=(1, 2))
            runs, run = [], 0
            for lit in rows:
                if lit:
                    run += 1
                elif run:
                    runs.append(run)
                    run = 0
            runs += [run] if run else []
            assert runs and min(runs) >= 10, runs
            assert len(runs) >= 2 or size[1] >= 500  # a line that does not fit wraps


    def test_titles_use_the_table2_size_classes(self):
        from dcnviz.analysis.units import Unit
        from dcnviz.viz.sampling import roi_label, unit_title

        # picked as the "small" unit (the smallest box found), but 100x150 px is Table 2's medium class
        small = Unit("small", (5, 5), (60.0, 80.0), (10.0, 5.0, 109.0, 154.0), "medium")
        assert unit_title(small, "ring 0.91") == "medium object: ring 0.91, 100x150 px"
        assert unit_title(Unit("background", (1, 1), (30.0, 30.0))) == "background at (30, 30)"
        assert unit_title(Unit("at", (1, 1), (30.0, 30.0))) == "unit at cell centre (30.0, 30.0)"

        class Roi:
            class_name, probability = "ring", 0.61
            detection_score = 0.94

        assert roi_label(Roi()) == "ring 0.94"  # a detection: its own score
        Roi.detection_score = None
        assert roi_label(Roi()) == "ring p=0.61"  # a --box: the head's probability, marked

    def test_vector_figures(self):
        """--format svg|pdf: the photo embedded once per panel, every point a vector marker, text as text."""
        from dcnviz.viz.vector import Panel, vector_figure

        image = np.full((60, 80, 3), 90, np.uint8)
        xy = np.array([[10.5, 20.0], [30.0, 40.0], [70.0, 5.0]])
        panels = [Panel(image, "small object", xy, np.array([True, True, False]), (40.0, 30.0), box=(30, 20, 50, 40)),
                  Panel(image, "ring 0.94", roi=(5, 5, 60, 50), bins=np.array([[[10, 10, 20, 20]]]),
                        regular=np.array([[[5, 5, 15, 15]]]), label="ring 0.94")]
        svg = vector_figure(panels, "svg", footer="a footer").decode()
        assert svg.count("<image") == 2 and svg.count("<use") == 2  # a marker per valid point
        assert "fill: none; stroke: #ff0000" in svg  # the hollow one
        assert ">small object</text>" in svg and ">a footer</text>" in svg
        assert vector_figure(panels, "pdf").startswith(b"%PDF")
        with pytest.raises(ValueError, match="svg or pdf"):
            vector_figure(panels, "png")

    def test_histogram_png(self):
        edges = np.linspace(0, 8, 33)
        counts = np.zeros((4, 33), np.int64)
        counts[0, 8], counts[2, 12], counts[2, 32] = 5, 7, 1
        png = cv2.imdecode(np.frombuffer(dilation_histogram(edges, counts, ("s", "m", "l", "b"), "t", 2), np.uint8),
                           cv2.IMREAD_COLOR)
        assert png is not None and png.shape[2] == 3
