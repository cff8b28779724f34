"""dcnviz.analysis on hand-computed offsets (3x3 taps, k = i*3 + j; dy at channel 2k, dx at 2k + 1)."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dcnviz.analysis import (BACKGROUND, EXCLUDED, LARGE, MEDIUM, SMALL, DilationStats, LayerGeometry,
                             PAPER_TABLE2, TABLE2_CONFIG, assign_buckets, box_areas, effective_dilation,
                             feature_to_image, image_to_cell, sampling_locations, size_bucket)
from dcnviz.structures import Prep

RES5 = LayerGeometry(kernel_size=3, dilation=2, padding=2, stride=1)
REGULAR = np.array([(2 * i - 2, 2 * j - 2) for i in range(3) for j in range(3)], float)  # res5 taps - p


def offsets(h, w, groups=1):
    return np.zeros((2 * 9 * groups, h, w))


def set_tap(off, k, dy, dx, cell=(slice(None), slice(None)), group=0):
    off[group * 18 + 2 * k][cell] = dy
    off[group * 18 + 2 * k + 1][cell] = dx


def official_bottom_points(offsets_top_first, unit, dilation=2, pad=2):
    """The official get_bottom_position as official.md §5.1 describes it: round each point, skip it if
    outside the map, drop out-of-map regular taps, then give the n-th KEPT tap the offsets of tap n."""
    h, w = offsets_top_first[0].shape[-2:]
    points = [np.asarray(unit, float)]
    for off in offsets_top_first:
        below = []
        for p in points:
            c = np.round(p)
            if c[0] < 0 or c[1] < 0 or c[0] > h - 1 or c[1] > w - 1:
                continue
            taps = [c + (dilation * a - pad, dilation * b - pad) for a in range(3) for b in range(3)]
            kept = [t for t in taps if 0 <= t[0] <= h - 1 and 0 <= t[1] <= w - 1]
            o = off[:, int(c[0]), int(c[1])]
            below += [t + (o[2 * n], o[2 * n + 1]) for n, t in enumerate(kept)]
        points = below
    return np.array(points)


class TestEffectiveDilation:
    @pytest.mark.parametrize("d", [1, 2, 3])
    def test_zero_offsets_give_the_dilation_exactly(self, d):
        out = effective_dilation(np.zeros((2, 18, 3, 4)), kernel_size=3, dilation=d)
        assert out.shape == (2, 1, 3, 4) and out.dtype == np.float64
        assert (out == d).all()

    def test_torch_unbatched_input(self):
        out = effective_dilation(torch.zeros(18, 2, 5, dtype=torch.float32))
        assert isinstance(out, np.ndarray) and out.shape == (1, 2, 5) and (out == 2).all()

    def test_uniform_shift_leaves_it_unchanged(self):
        off = offsets(2, 2)
        for k in range(9):
            set_tap(off, k, 0.7, -1.3)
        np.testing.assert_allclose(effective_dilation(off), 2.0, rtol=0, atol=1e-12)

    def test_right_column_moved_out_by_one(self):
        off = offsets(1, 1)
        for k in (2, 5, 8):
            set_tap(off, k, 0.0, 1.0)
        # 3 horizontal pairs of length 3, 3 of length 2, 6 vertical pairs of length 2
        assert effective_dilation(off)[0, 0, 0] == pytest.approx((3 * 3 + 3 * 2 + 6 * 2) / 12, abs=1e-12)

    def test_outer_taps_moved_outward_by_one(self):
        off = offsets(1, 1)
        for k in range(9):
            i, j = divmod(k, 3)
            set_tap(off, k, i - 1.0, j - 1.0)
        # rows at -1, 2, 5 and columns at -1, 2, 5: every adjacent pair is 3 apart
        assert effective_dilation(off)[0, 0, 0] == pytest.approx(3.0, abs=1e-12)

    def test_centre_tap_moved_right_uses_euclidean_distance(self):
        off = offsets(1, 1)
        set_tap(off, 4, 0.0, 1.0)
        # centre at (2, 3): left pair 3, right pair 1, up and down pairs sqrt(2² + 1²); 8 other pairs of 2
        expected = (3 + 1 + 2 * math.sqrt(5) + 8 * 2) / 12
        assert effective_dilation(off)[0, 0, 0] == pytest.approx(expected, abs=1e-12)

    def test_four_groups_use_their_own_channel_blocks(self):
        off = offsets(1, 1, groups=4)
        for k in range(9):
            i, j = divmod(k, 3)
            set_tap(off, k, 0.7, -1.3, group=1)           # uniform shift
            set_tap(off, k, i - 1.0, j - 1.0, group=3)    # outward stretch
        for k in (2, 5, 8):
            set_tap(off, k, 0.0, 1.0, group=2)            # right column out by one
        out = effective_dilation(off, deformable_groups=4)
        np.testing.assert_allclose(out[:, 0, 0], [2.0, 2.0, 2.25, 3.0], rtol=0, atol=1e-12)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="offset"):
            effective_dilation(np.zeros((18, 2, 2)), deformable_groups=4)
        with pytest.raises(ValueError, match="NaN"):
            effective_dilation(np.full((18, 2, 2), np.nan))
        with pytest.raises(TypeError, match="kernel_size"):
            effective_dilation(np.zeros((18, 2, 2)), kernel_size=2.5)


class TestSamplingLocations:
    def test_zero_offsets_give_the_regular_dilated_grid(self):
        r = sampling_locations([offsets(9, 9)], (4, 4), RES5)
        np.testing.assert_array_equal(r.points, REGULAR + 4)
        assert r.inside.all() and r.valid.all() and r.map_size == (9, 9)

    def test_uniform_shift_moves_every_point(self):
        off = offsets(9, 9)
        for k in range(9):
            set_tap(off, k, 0.7, -1.3)
        one = sampling_locations([off], (4, 4), RES5)
        np.testing.assert_allclose(one.points, REGULAR + 4 + (0.7, -1.3), rtol=0, atol=1e-12)
        two = sampling_locations([off, off], (4, 4), RES5)  # every level adds the shift once
        assert two.points.shape == (81, 2)
        np.testing.assert_allclose(two.points[4 * 9 + 4], (4 + 1.4, 4 - 2.6), rtol=0, atol=1e-12)

    def test_border_keeps_all_taps_with_their_own_offsets(self):
        off = offsets(5, 5)
        set_tap(off, 0, 2.5, 2.5)  # tap 0 starts outside at (-2, -2) and samples back inside
        for k in range(1, 9):
            set_tap(off, k, 0.1 * (k + 1), -0.1 * (k + 1))
        r = sampling_locations([off], (0, 0), RES5)
        expected = [(0.5, 0.5), (-1.8, -0.2), (-1.7, 1.7), (0.4, -2.4), (0.5, -0.5),
                    (0.6, 1.4), (2.7, -2.7), (2.8, -0.8), (2.9, 1.1)]
        np.testing.assert_allclose(r.points, expected, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(r.inside, [1, 0, 0, 0, 0, 1, 0, 0, 1])
        np.testing.assert_array_equal(r.valid, r.inside)
        # the official rule keeps only taps 4, 5, 7, 8 and gives them the offsets of taps 0, 1, 2, 3
        official = official_bottom_points([off], (0, 0))
        np.testing.assert_allclose(official, [(2.5, 2.5), (0.2, 1.8), (2.3, -0.3), (2.4, 1.6)], atol=1e-12)
        assert not np.allclose(official[0], r.points[4])
        # nearest-cell reading changes nothing here (the unit is a cell), so round=True keeps all 9 too
        np.testing.assert_array_equal(sampling_locations([off], (0, 0), RES5, round=True).points, r.points)

    def test_round_true_matches_the_official_rule_inside_the_map(self):
        rng = np.random.default_rng(7)
        stack = [rng.uniform(-0.45, 0.45, (18, 21, 21)) for _ in range(3)]
        official = official_bottom_points(stack, (10, 10))
        assert official.shape == (729, 2)
        ours = sampling_locations(stack, (10, 10), RES5, round=True)
        np.testing.assert_array_equal(ours.points, official)
        assert ours.valid.all()
        assert not np.allclose(sampling_locations(stack, (10, 10), RES5).points, official)

    def test_two_levels_on_a_tiny_map(self):
        top = offsets(7, 7)
        for k in range(9):
            set_tap(top, k, 0.0, 1.0, cell=(3, 3))  # level 1: rows {1, 3, 5}, columns {2, 4, 6}
        rows, cols = np.meshgrid(np.arange(7.0), np.arange(7.0), indexing="ij")
        bottom = offsets(7, 7)
        for k in range(9):
            set_tap(bottom, k, 0.1 * rows, 0.01 * cols)  # every tap of cell (r, c) moves by (0.1r, 0.01c)
        r = sampling_locations([top, bottom], (3, 3), RES5)
        expected = []
        for a in range(3):
            for b in range(3):
                y, x = 1 + 2 * a, 2 + 2 * b
                expected += [(y - 2 + 2 * a2 + 0.1 * y, x - 2 + 2 * b2 + 0.01 * x)
                             for a2 in range(3) for b2 in range(3)]
        assert r.points.shape == (81, 2)
        np.testing.assert_allclose(r.points, expected, rtol=0, atol=1e-12)
        # rows: 7 of the 9 (level-1 row, tap row) pairs land in [0, 7); columns: 8 of 9
        assert r.inside.sum() == 7 * 8 and r.valid.sum() == 7 * 8
        assert not r.inside[0] and r.inside[4 * 9 + 4]

    def test_offsets_at_fractional_positions_are_bilinear(self):
        top = offsets(6, 6)
        for k in range(9):
            set_tap(top, k, 0.25, 0.5, cell=(2, 2))  # level 1 at (0.25 + 2a, 0.5 + 2b)
        bottom = offsets(6, 6)
        for k in range(9):
            set_tap(bottom, k, 1.0, -2.0, cell=(2, 2))  # a single non-zero cell
        r = sampling_locations([top, bottom], (2, 2), RES5)
        # centre tap at (2.25, 2.5): cell (2, 2) has weight (1 - 0.25) * (1 - 0.5) = 0.375
        np.testing.assert_allclose(r.points[36:45], REGULAR + (2.25 + 0.375, 2.5 - 0.75), atol=1e-12)
        # tap 0 at (0.25, 0.5) interpolates rows 0-1, columns 0-1: no offset
        np.testing.assert_allclose(r.points[0:9], REGULAR + (0.25, 0.5), atol=1e-12)
        # round=True: (2.25, 2.5) rounds to cell (2, 2) (halves to even, as numpy), taps built around it
        nearest = sampling_locations([top, bottom], (2, 2), RES5, round=True)
        np.testing.assert_allclose(nearest.points[36:45], REGULAR + (2 + 1.0, 2 - 2.0), atol=1e-12)

    def test_out_of_map_points_read_the_border_and_are_flagged(self):
        top = offsets(5, 5)
        set_tap(top, 0, -0.7, 0.0, cell=(0, 2))  # tap 0 of unit (0, 2) at (-2.7, 0)
        bottom = offsets(5, 5)
        set_tap(bottom, 4, 0.3, 0.4, cell=(0, 0))  # read at the clamped position (0, 0)
        r = sampling_locations([top, bottom], (0, 2), RES5)
        np.testing.assert_allclose(r.points[4], (-2.7 + 0.3, 0.4), atol=1e-12)
        assert not r.inside[4] and not r.valid[4]
        # a point back inside whose parent was outside: inside but not valid
        set_tap(bottom, 8, 2.0, 0.0, cell=(0, 0))
        r = sampling_locations([top, bottom], (0, 2), RES5)
        np.testing.assert_allclose(r.points[8], (-2.7 + 2 + 2.0, 2.0), atol=1e-12)
        assert r.inside[8] and not r.valid[8]

    def test_groups(self):
        g4 = LayerGeometry(3, 2, 2, 1, deformable_groups=4)
        off = offsets(9, 9, groups=4)
        for g in range(4):
            for k in range(9):
                set_tap(off, k, float(g), -float(g), group=g)
        regular2 = np.array([(a[0] + b[0], a[1] + b[1]) for a in REGULAR for b in REGULAR]) + 4
        every = sampling_locations([off, off], (4, 4), g4, group="all")
        assert every.points.shape == (4, 81, 2) and every.inside.shape == (4, 81)
        for g in range(4):
            np.testing.assert_allclose(every.points[g], regular2 + (2 * g, -2 * g), atol=1e-12)
        np.testing.assert_array_equal(sampling_locations([off, off], (4, 4), g4, group=2).points, every.points[2])
        mean = sampling_locations([off, off], (4, 4), g4, group="mean")
        np.testing.assert_allclose(mean.points, regular2 + (3.0, -3.0), atol=1e-12)
        with pytest.raises(ValueError, match="group"):
            sampling_locations([off], (4, 4), g4, group=4)
        with pytest.raises(ValueError, match="group"):
            sampling_locations([off], (4, 4), g4, group="max")

    def test_per_layer_geometry_and_stride(self):
        # bottom layer: 3x3, dilation 1, padding 1, stride 2 on a 10x10 input -> 5x5 output
        bottom = LayerGeometry(3, 1, 1, 2)
        top = LayerGeometry(3, 1, 1, 1)
        r = sampling_locations([offsets(5, 5), offsets(5, 5)], (2, 2), [top, bottom], input_size=(10, 10))
        # top taps at 1..3; each expands to 2p - 1 + {0, 1, 2}
        assert r.map_size == (10, 10)
        assert r.points[:, 0].min() == 1 and r.points[:, 0].max() == 7
        with pytest.raises(ValueError, match="input_size"):
            sampling_locations([offsets(5, 5)], (2, 2), bottom)

    def test_misordered_or_malformed_inputs(self):
        with pytest.raises(ValueError, match="top layer first"):
            sampling_locations([offsets(9, 9), offsets(7, 7)], (4, 4), RES5)
        with pytest.raises(ValueError, match="unit"):
            sampling_locations([offsets(9, 9)], (9, 0), RES5)
        with pytest.raises(ValueError, match=r"offsets_top_first\[0\]"):
            sampling_locations([np.zeros((72, 9, 9))], (4, 4), RES5)
        with pytest.raises(ValueError, match="geometry"):
            sampling_locations([offsets(9, 9)] * 2, (4, 4), [RES5])

    def test_geometry_from_module(self):
        module = SimpleNamespace(weight=torch.zeros(8, 4, 3, 3), stride=1, padding=(2, 2), dilation=2,
                                 deformable_groups=4)
        assert LayerGeometry.from_module(module) == LayerGeometry((3, 3), (2, 2), (2, 2), (1, 1), 4)
        assert RES5.output_size((38, 63)) == (38, 63)


class TestCoordinates:
    def test_feature_to_image_with_a_non_trivial_scale(self):
        # stride 16 at scale 0.75: one cell is 16 / 0.75 = 21.333 original pixels
        np.testing.assert_allclose(feature_to_image([[0, 0], [2, 3], [-1, -0.5]], 0.75, 16),
                                   [[10 + 2 / 3, 10 + 2 / 3], [53 + 1 / 3, 74 + 2 / 3], [-(10 + 2 / 3), 0]],
                                   rtol=0, atol=1e-12)

    def test_image_to_cell(self):
        cells = image_to_cell([[53.0, 74.0], [21.3, 0.0], [21.34, 0.0]], 0.75, 16)
        np.testing.assert_array_equal(cells, [[2, 3], [0, 0], [1, 0]])
        grid = np.stack(np.meshgrid(np.arange(40), np.arange(60), indexing="ij"), -1)
        np.testing.assert_array_equal(image_to_cell(feature_to_image(grid, 0.6, 16), 0.6, 16), grid)
        with pytest.raises(ValueError, match="scale"):
            image_to_cell([[1.0, 1.0]], 0.0, 16)


class TestBuckets:
    # 10x10 map at stride 16 and scale 0.5: cell i is centred at image pixel (i + 0.5) * 32 = 16, 48, ...
    BOXES = [[0, 0, 239, 239],        # 240² large; covers [0, 240): centres 16..208 (cells 0..6)
             [32, 32, 131, 131],      # 100² medium inside it: cells 1..3
             [70, 70, 89, 89],        # 20² small inside that: cell 2
             [256, 256, 319, 319],    # difficult only: cells 8, 9
             [0, 0, 40, 40]]          # difficult, but cell (0, 0) is also in the large box

    def test_smallest_box_wins_and_difficult_only_is_left_out(self):
        buckets = assign_buckets((10, 10), 0.5, 16, self.BOXES, [0, 0, 0, 1, 1])
        expected = np.full((10, 10), BACKGROUND)
        expected[0:7, 0:7] = LARGE
        expected[1:4, 1:4] = MEDIUM
        expected[2, 2] = SMALL
        expected[8:10, 8:10] = EXCLUDED
        np.testing.assert_array_equal(buckets, expected)

    def test_box_area_and_exact_thresholds(self):
        np.testing.assert_array_equal(box_areas([[0, 0, 95, 95], [10, 20, 233, 243]]), [96 ** 2, 224 ** 2])
        np.testing.assert_array_equal(size_bucket([9215, 9216, 50176, 50177]), [SMALL, MEDIUM, MEDIUM, LARGE])
        one = [[0, 0, 95, 95], [0, 0, 95, 94], [0, 0, 223, 223], [0, 0, 224, 223]]  # centre of cell (0, 0): 16
        assert [assign_buckets((1, 1), 0.5, 16, [b])[0, 0] for b in one] == [MEDIUM, SMALL, MEDIUM, LARGE]

    def test_no_boxes_is_background_and_bad_boxes_are_refused(self):
        assert (assign_buckets((2, 3), 1.0, 16, np.zeros((0, 4))) == BACKGROUND).all()
        with pytest.raises(ValueError, match="boxes"):
            assign_buckets((2, 3), 1.0, 16, [[10, 0, 5, 5]])
        with pytest.raises(ValueError, match="difficult"):
            assign_buckets((2, 3), 1.0, 16, [[0, 0, 5, 5]], [True, False])


class TestDilationStats:
    def test_streaming_mean_std_and_histogram_match_numpy(self):
        rng = np.random.default_rng(3)
        stats = DilationStats(hist_max=8.0, hist_bins=16)
        seen = []
        for _ in range(4):
            d = rng.gamma(3.0, 1.5, (2, 6, 7))
            b = rng.integers(-1, 4, (6, 7))
            b[b == 2] = 1  # the large bucket never occurs
            stats.update("res5c", d, b)
            seen.append((d, b))
        per_group = stats.summary("per-group")["res5c"]
        pooled = stats.summary()["res5c"]
        hist = stats.histograms("per-group")["res5c"]
        for k, name in enumerate(("small", "medium", "large", "background")):
            values = np.concatenate([d[:, b == k] for d, b in seen], axis=1)  # (2, n)
            for g in range(2):
                s = per_group[g][name]
                assert s["n"] == values.shape[1]
                if s["n"]:
                    assert s["mean"] == pytest.approx(values[g].mean(), rel=1e-12)
                    assert s["std"] == pytest.approx(values[g].std(), rel=1e-12)
                counts, _ = np.histogram(values[g][values[g] < 8.0], bins=stats.edges)
                np.testing.assert_array_equal(hist[g, k, :-1], counts)
                assert hist[g, k, -1] == (values[g] >= 8.0).sum()
            if values.size:
                assert pooled[name]["n"] == values.size
                assert pooled[name]["mean"] == pytest.approx(values.mean(), rel=1e-12)
                assert pooled[name]["std"] == pytest.approx(values.std(), rel=1e-12)
        assert pooled["large"] == {"mean": None, "std": None, "n": 0}
        assert (stats.histograms()["res5c"] == hist.sum(axis=0)).all()

    def test_add_image_buckets_every_layer(self):
        stats = DilationStats()
        prep = Prep(image_size=(320, 320), scale=0.5, input_size=(160, 160))
        maps = {name: effective_dilation(offsets(10, 10)) for name in ("res5c", "res5b", "res5a")}
        stats.add_image(maps, prep, TestBuckets.BOXES, [0, 0, 0, 1, 1], stride=16)
        out = stats.summary()
        assert list(out) == ["res5c", "res5b", "res5a"] and stats.images == 1
        # 7x7 large box minus 3x3 medium, 3x3 medium minus 1 small, 1 small, 100 - 49 - 4 excluded
        for layer in out.values():
            assert {k: v["n"] for k, v in layer.items()} == {"small": 1, "medium": 8, "large": 40, "background": 47}
            assert all(v["mean"] == 2.0 and v["std"] == 0.0 for v in layer.values())

    def test_add_image_uses_each_layers_stride(self):
        """FPN DCN's layers sit at strides 8, 16 and 32: each map is bucketed with its own stride (the same
        map at strides 16 and 32 puts the boxes in different cells)."""
        prep = Prep(image_size=(320, 320), scale=0.5, input_size=(160, 160))
        maps = {"fine": effective_dilation(offsets(10, 10)), "coarse": effective_dilation(offsets(10, 10))}
        mixed = DilationStats()
        mixed.add_image(maps, prep, TestBuckets.BOXES, [0, 0, 0, 1, 1], stride={"fine": 16, "coarse": 32})
        for stride, name in ((16, "fine"), (32, "coarse")):
            alone = DilationStats()
            alone.add_image({name: maps[name]}, prep, TestBuckets.BOXES, [0, 0, 0, 1, 1], stride=stride)
            assert mixed.summary()[name] == alone.summary()[name]
        assert mixed.summary()["fine"] != mixed.summary()["coarse"]

    def test_groups_must_not_change(self):
        stats = DilationStats()
        stats.update("res5a", np.ones((4, 2, 2)), np.zeros((2, 2), int))
        with pytest.raises(ValueError, match="deformable groups"):
            stats.update("res5a", np.ones((1, 2, 2)), np.zeros((2, 2), int))
        with pytest.raises(ValueError, match="groups"):
            stats.summary("mean")


def test_paper_table_and_config():
    assert set(PAPER_TABLE2) == {"res5a", "res5b", "res5c"}
    assert all(list(row) == ["small", "medium", "large", "background"] for row in PAPER_TABLE2.values())
    assert PAPER_TABLE2["res5c"]["large"] == (8.4, 4.5) and PAPER_TABLE2["res5a"]["small"] == (2.2, 1.2)
    assert TABLE2_CONFIG["small_max_area"] == 96 ** 2 and TABLE2_CONFIG["large_min_area"] == 224 ** 2
