"""dcnviz.analysis.inspect / Inspection: one forward pass, then any unit's sampling points and any RoI's parts.

The RoI parts are computed by the head alone on the kept res5 features; they must equal what a second full
prediction with those boxes gives (what ``dcnviz rois`` did before). The commands are views of the same
object: their JSON equals what the Inspection returns."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dcnviz
import tiny_models
from analysis_models import write_weights
from dcnviz.analysis import (Inspection, LayerGeometry, LayerRecord, inspect, pick_units, roi_parts,
                             sampling_locations, segment_boxes, select_layers)
from dcnviz.cli import main
from dcnviz.errors import UserError
from dcnviz.io.images import read_image
from dcnviz.models.postprocess import select_detections
from dcnviz.structures import Prep

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "synth_mixed.jpg"
IMAGE = np.random.default_rng(3).integers(0, 255, (72, 100, 3), dtype=np.uint8)  # tiny models: scale 64/72


@pytest.fixture(scope="module")
def rfcn():
    return tiny_models.rfcn("rfcn_dcn")  # res5a, res5b deformable (4 groups), 7x7 deformable PS RoI pooling


@pytest.fixture(scope="module")
def seen(rfcn):
    return inspect(rfcn, IMAGE)


def part_kwargs(model, scale):
    g = model.part_geometry
    return dict(scale=scale, spatial_scale=g.spatial_scale, pooled_size=g.pooled_size, part_size=g.part_size,
                trans_std=g.trans_std)


class TestInspect:
    def test_layers_and_prediction_of_one_forward(self, rfcn, seen):
        det = rfcn.predict(IMAGE)
        assert seen.names == ["res5a", "res5b"] and [l.name for l in seen.stack()] == ["res5b", "res5a"]
        for record in seen.layers:
            assert record.geometry == LayerGeometry(3, 2, 2, 1, 4) and record.feature_stride == 16
            np.testing.assert_array_equal(record.offset, det.captured[f"{record.name}_branch2b_offset"])
            assert record.map_size == tuple(det.captured[f"{record.name}_branch2b_offset"].shape[-2:])
        np.testing.assert_array_equal(seen.result.boxes, det.boxes)
        assert seen.prep == det.prep and seen.image is IMAGE and "features" not in seen.result.captured
        assert seen.class_names == tiny_models.DET_CLASSES and seen.has_rois

    def test_samples_of_a_unit(self, rfcn, seen):
        det = rfcn.predict(IMAGE)
        unit = seen.unit_at(40.0, 30.0)
        scale = seen.prep.scale  # 64 / 72: a cell is 18 image pixels
        assert unit.cell == (int(30 * scale // 16), int(40 * scale // 16))
        assert unit.xy == pytest.approx(((unit.cell[1] + 0.5) * 16 / scale, (unit.cell[0] + 0.5) * 16 / scale))
        offsets = [det.captured["res5b_branch2b_offset"], det.captured["res5a_branch2b_offset"]]
        for group in (1, "all", "mean"):
            expected = sampling_locations(offsets, unit.cell, LayerGeometry(3, 2, 2, 1, 4), group=group, round=True)
            got = seen.samples(unit, group=group, round=True)
            np.testing.assert_array_equal(got.xy, expected.image_xy(scale, 16))
            np.testing.assert_array_equal(got.locations.valid, expected.valid)
        one = seen.samples(unit.cell, "res5a", group=0)  # a cell works as well as a unit; one level: 9 points
        assert one.layers == ("res5a",) and one.xy.shape == (9, 2) and one.unit.cell == unit.cell
        with pytest.raises(ValueError, match="outside the 100x72 image"):
            seen.unit_at(100, 5)
        with pytest.raises(ValueError, match="outside the"):
            seen.unit((40, 0))

    def test_roi_parts_of_detections_equal_a_second_prediction(self, rfcn, seen):
        chosen = select_detections(seen.result, max_det=3)
        assert len(chosen) == 3
        rois = seen.detection_rois(chosen)
        again = rfcn.predict(IMAGE, boxes=seen.result.boxes[chosen])
        for k, (roi, index) in enumerate(zip(rois, chosen)):
            label = int(seen.result.labels[index])
            expected = roi_parts(again.captured["rois"][k], again.captured["rfcn_cls_offset"][k], label,
                                 **part_kwargs(rfcn, seen.prep.scale))
            np.testing.assert_array_equal(roi.parts.bins, expected.bins)
            np.testing.assert_array_equal(roi.parts.roi, expected.roi)
            assert (roi.source, roi.class_id, roi.class_name) == ("detection", label, tiny_models.DET_CLASSES[label])
            assert roi.probability == float(again.captured["cls_prob"][k, label])
            assert roi.detection_score == float(seen.result.scores[index])

    def test_roi_parts_of_boxes_pick_the_best_class_on_the_box(self, rfcn, seen):
        boxes = np.array([[5, 5, 60, 40], [20, 10, 90, 70], [0, 0, 99, 71]], np.float64)
        again = rfcn.predict(IMAGE, boxes=boxes)
        prob = again.captured["cls_prob"].numpy()
        best = seen.box_rois(boxes)
        assert [r.class_id for r in best] == (1 + prob[:, 1:].argmax(axis=1)).tolist()
        forced = seen.box_rois(boxes, class_id=2)
        for k, roi in enumerate(forced):
            assert (roi.source, roi.class_name, roi.detection_score) == ("box", "dog", None)
            assert roi.probability == float(prob[k, 2])
            expected = roi_parts(again.captured["rois"][k], again.captured["rfcn_cls_offset"][k], 2,
                                 **part_kwargs(rfcn, seen.prep.scale))
            np.testing.assert_array_equal(roi.parts.bins, expected.bins)
        assert seen.box_rois(np.zeros((0, 4))) == []

    def test_units_on_segments(self):
        model = tiny_models.deeplab(True)
        seen = inspect(model, IMAGE)
        result = model.predict(IMAGE)
        np.testing.assert_array_equal(seen.result.labels, result.labels)
        assert not seen.has_rois and seen.names == ["res5a", "res5b"]
        boxes = segment_boxes(result.labels, skip=[])  # the tiny classes (road, sky, car) have no background
        choice = seen.choose_units()
        expected = pick_units(boxes, seen.layer().map_size, seen.prep.scale, 16, IMAGE.shape[:2])
        assert choice.source == "the segments" and [(u.kind, u.cell) for u in choice.units] == [
            (u.kind, u.cell) for u in expected]
        with pytest.raises(ValueError, match="no deformable RoI pooling"):
            seen.box_rois([[0, 0, 10, 10]])

    def test_annotation_of_another_size(self, seen, tmp_path):
        xml = tmp_path / "a.xml"
        xml.write_text("<annotation><size><width>50</width><height>40</height><depth>3</depth></size>"
                       "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
                       "</bndbox></object></annotation>")
        with pytest.raises(UserError, match="is for a 50x40 image, but the image is 100x72"):
            seen.choose_units(annotation=xml)


class TestWithoutAModel:
    """An Inspection built from layer records alone (what a model without ``predict`` gives)."""

    def make(self):
        # 400x300 at scale 1, two stride-1 layers on a 19x25 map of stride 16: res5a without offsets, res5b
        # moving every tap one cell right (dx = 1 at channels 2k + 1)
        shift = np.zeros((18, 19, 25))
        shift[1::2] = 1.0
        layers = [LayerRecord("res5a", LayerGeometry(3, 2, 2, 1), 16, np.zeros((1, 18, 19, 25))),
                  LayerRecord("res5b", LayerGeometry(3, 2, 2, 1), 16, shift)]
        return Inspection(layers, Prep((300, 400), 1.0, (300, 400)), np.zeros((300, 400, 3), np.uint8))

    def test_points_by_hand(self):
        seen = self.make()
        unit = seen.unit_at(250, 170)
        assert (unit.cell, unit.xy) == ((10, 15), (248.0, 168.0))
        got = seen.samples(unit)
        # tap (a, b) of res5b: cell (10 + 2a - 2, 15 + 2b - 2 + 1); then tap (c, d) of res5a adds (2c - 2, 2d - 2)
        grid = [((15 + 2 * b - 1 + 2 * d - 2 + 0.5) * 16, (10 + 2 * a - 2 + 2 * c - 2 + 0.5) * 16)
                for a in range(3) for b in range(3) for c in range(3) for d in range(3)]
        np.testing.assert_array_equal(got.xy, grid)
        assert got.layers == ("res5b", "res5a") and got.locations.valid.all()
        assert seen.layer("res5b").effective_dilation().shape == (1, 19, 25)
        np.testing.assert_array_equal(seen.layer("res5a").effective_dilation(), 2.0)

    def test_no_prediction(self):
        seen = self.make()
        choice = seen.choose_units()
        assert [u.kind for u in choice.units] == ["background"] and choice.missing == ("small", "large")
        assert choice.source == "no prediction" and choice.boxes.shape == (0, 4)
        assert not seen.has_rois and seen.class_names == ()
        with pytest.raises(ValueError, match="no deformable RoI pooling"):
            seen.box_rois([[0, 0, 10, 10]])

    def test_stacks(self):
        seen = self.make()
        assert select_layers(["a", "b", "c"]) == [2, 1, 0] and select_layers(["a", "b", "c"], "b") == [1, 0]
        assert select_layers(["a", "b", "c"], levels=1) == [2]
        with pytest.raises(ValueError, match="no deformable layer 'res5c'; its deformable layers are res5a, res5b"):
            seen.stack("res5c")
        with pytest.raises(ValueError, match=r"3 levels from res5b need 3 .* there are 2 \(res5b, res5a\)"):
            seen.stack(levels=3)
        with pytest.raises(ValueError, match="unique"):
            Inspection([seen.layers[0]] * 2, seen.prep, seen.image)

    def test_stacks_stay_within_one_stride(self):
        """FPN DCN: res3b3 (stride 8), res4b22 (16), res5a-c (32); a stack never crosses a stride change."""
        names, strides = ["res3b3", "res4b22", "res5a", "res5b", "res5c"], [8, 16, 32, 32, 32]
        assert select_layers(names, strides=strides) == [4, 3, 2]
        assert select_layers(names, "res5b", strides=strides) == [3, 2]
        assert select_layers(names, "res4b22", strides=strides) == [1]
        with pytest.raises(ValueError, match=r"4 levels from res5c cross from stride 32 to res4b22 at stride 16; .*"
                                             r"at most 3 \(res5c, res5b, res5a\)"):
            select_layers(names, levels=4, strides=strides)
        with pytest.raises(ValueError, match="6 levels from res5c need 6"):
            select_layers(names, levels=6, strides=strides)
        assert select_layers(names, levels=5) == [4, 3, 2, 1, 0]  # without strides: every layer below


def cli(args, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--device", "cpu"]], prog_name="dcnviz")
    assert result.exit_code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Random weights for rfcn_dcn_synth, and its Inspection of SAMPLE."""
    weights = write_weights("rfcn_dcn_synth", tmp_path_factory.mktemp("w") / "w.safetensors")
    return weights, inspect(dcnviz.load_model("rfcn_dcn_synth", weights, "cpu"), read_image(SAMPLE))


class TestCommandsAreViews:
    """The offsets and rois JSON hold what the Inspection of the same model and image returns."""

    def test_offsets_at(self, synth, tmp_path, monkeypatch):
        weights, seen = synth
        cli(["offsets", SAMPLE, "--weights", weights, "--at", "250,170", "--at", "33,300", "--group", "0",
             "--levels", "2", "-o", tmp_path / "out"], tmp_path, monkeypatch)
        record = json.loads((tmp_path / "out" / "synth_mixed_res5c.json").read_text())
        for unit, (x, y) in zip(record["units"], [(250, 170), (33, 300)]):
            expected = seen.samples(seen.unit_at(x, y), levels=2, group=0)
            # positions are written rounded to a hundredth of a pixel
            assert unit["cell"] == list(expected.unit.cell) and unit["xy"] == np.round(expected.unit.xy, 2).tolist()
            np.testing.assert_array_equal(unit["points"], np.round(expected.xy, 2))
            assert unit["valid"] == expected.locations.valid.tolist()

    def test_rois_of_detections(self, synth, tmp_path, monkeypatch):
        weights, seen = synth
        cli(["rois", SAMPLE, "--weights", weights, "--top", "2", "--conf", "0", "-o", tmp_path / "out"],
            tmp_path, monkeypatch)
        record = json.loads((tmp_path / "out" / "synth_mixed.json").read_text())
        expected = seen.detection_rois([0, 1])
        assert len(record["rois"]) == 2
        for roi, want in zip(record["rois"], expected):
            assert (roi["class_id"], roi["head_probability"], roi["detection_score"]) == (
                want.class_id, round(want.probability, 4), round(want.detection_score, 4))
            np.testing.assert_array_equal(roi["box"], np.round(want.box, 2))
            np.testing.assert_array_equal(roi["parts"], np.round(want.parts.bins, 2))
            np.testing.assert_array_equal(roi["regular_parts"], np.round(want.parts.regular, 2))
