"""The visualizer: dcnviz.viz.draw (boxes with labels, label-map overlay with legend)."""
from __future__ import annotations


import numpy as np
import pytest

import fake_models
from dcnviz.structures import Detections, Prep, Segmentation
from dcnviz.viz.draw import class_colors, draw_detections, overlay_segmentation

PALETTE = ((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255))  # RGB per class of DET_CLASSES


def one_box(box, label=1, size=(100, 120)):
    return Detections(boxes=np.array([box], np.float32), scores=np.array([0.87], np.float32),
                      labels=np.array([label]), class_names=fake_models.DET_CLASSES,
                      prep=Prep(size, 1.0, size))


def labels_seg(labels, names=("road", "car", "sky"), palette=((10, 20, 30), (40, 50, 60), (70, 80, 90))):
    return Segmentation(labels=np.asarray(labels, np.uint8), class_names=names, palette=palette,
                        prep=Prep(np.shape(labels), 1.0, np.shape(labels)))


class TestDrawDetections:
    def test_deterministic_and_input_untouched(self):
        image = np.full((100, 120, 3), 128, np.uint8)
        dets = fake_models.fake_detections(image)
        first = draw_detections(image, dets, PALETTE)
        assert (image == 128).all()
        np.testing.assert_array_equal(first, draw_detections(image, dets, PALETTE))
        assert not np.array_equal(first, image)

    def test_box_in_class_colour_with_label_above(self):
        image = np.zeros((100, 120, 3), np.uint8)
        out = draw_detections(image, one_box([20, 40, 80, 90], label=3), PALETTE)
        assert tuple(out[65, 20]) == (255, 0, 0)  # left edge, class 3 = blue (RGB) = (255, 0, 0) BGR
        assert tuple(out[90, 50]) == (255, 0, 0)  # bottom edge (inclusive corner)
        assert tuple(out[65, 50]) == (0, 0, 0)    # inside untouched
        label_rows = np.flatnonzero((out[:40, 20:80] != 0).any(axis=(1, 2)))
        assert label_rows.size and label_rows.max() < 40  # label background sits above the box

    def test_label_inside_box_at_top_edge_and_within_image(self):
        image = np.zeros((100, 120, 3), np.uint8)
        out = draw_detections(image, one_box([100, 0, 119, 50]), PALETTE)
        assert tuple(out[5, 90]) == (0, 0, 255)  # label shifted left of the box, below the top edge

    def test_default_palette_and_tiny_image(self):
        image = np.zeros((8, 8, 3), np.uint8)
        out = draw_detections(image, one_box([1, 1, 6, 6], label=2, size=(8, 8)))
        assert tuple(out[4, 1]) == class_colors(4)[2][::-1]

    def test_line_width_hide_labels_and_hide_conf(self):
        image = np.zeros((100, 120, 3), np.uint8)
        dets = one_box([20, 40, 80, 90], label=3)
        wide = draw_detections(image, dets, PALETTE, line_width=6)
        assert tuple(wide[65, 22]) == (255, 0, 0) and tuple(draw_detections(image, dets, PALETTE)[65, 22]) == (0, 0, 0)
        bare = draw_detections(image, dets, PALETTE, labels=False)
        assert not bare[:38].any()  # no label above the box
        with_score = (draw_detections(image, dets, PALETTE)[:40] != 0).any(axis=(0, 2)).sum()
        without = (draw_detections(image, dets, PALETTE, conf=False)[:40] != 0).any(axis=(0, 2)).sum()
        assert 0 < without < with_score  # "cat" is shorter than "cat 0.87"

    def test_rejects_non_bgr_image(self):
        with pytest.raises(ValueError, match="expected a \\(H, W, 3\\) uint8 BGR image"):
            draw_detections(np.zeros((10, 10), np.uint8), one_box([1, 1, 5, 5], size=(10, 10)))


class TestOverlaySegmentation:
    def test_alpha_zero_and_one(self):
        image = np.full((6, 9, 3), 200, np.uint8)
        labels = np.array([[0, 1, 2, 255, 0, 1, 2, 255, 0]] * 6)
        seg = labels_seg(labels)
        np.testing.assert_array_equal(overlay_segmentation(image, seg, alpha=0.0, legend=False), image)
        out = overlay_segmentation(image, seg, alpha=1.0, legend=False)
        assert tuple(out[0, 0]) == (30, 20, 10) and tuple(out[0, 2]) == (90, 80, 70)
        assert tuple(out[0, 3]) == (200, 200, 200)  # 255 = ignore keeps the image

    def test_background_is_not_tinted(self):
        image = np.full((4, 4, 3), 100, np.uint8)
        seg = labels_seg(np.eye(4), names=("background", "cat"), palette=((0, 0, 0), (0, 0, 250)))
        out = overlay_segmentation(image, seg, alpha=0.5, legend=False)
        assert tuple(out[0, 1]) == (100, 100, 100) and tuple(out[0, 0]) == (175, 50, 50)

    def test_legend_fits_and_is_deterministic(self):
        labels = np.repeat(np.arange(40, dtype=np.uint8), 3)[None].repeat(60, axis=0)  # 60x120, 40 classes
        names = tuple(f"class{i}" for i in range(40))
        seg = labels_seg(labels, names=names, palette=class_colors(40))
        image = np.full((60, 120, 3), 200, np.uint8)
        out = overlay_segmentation(image, seg, alpha=0.0)
        np.testing.assert_array_equal(out, overlay_segmentation(image, seg, alpha=0.0))
        assert (out[:20, :20] < 200).any()  # the legend is there
        assert (out[-2:] == 200).all()      # and truncated ("+k more") before the bottom

    def test_size_mismatch(self):
        with pytest.raises(ValueError, match="label map is 3x2 but the image is 4x4"):
            overlay_segmentation(np.zeros((4, 4, 3), np.uint8), labels_seg(np.zeros((2, 3))))
