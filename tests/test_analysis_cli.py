"""The analysis commands (offsets, receptive-field, rois, dilation-stats) on the registered models with
deterministic random weights written to tmp files (the bundled weights are not needed): the JSON holds
what the analysis functions compute, the figures have their points where the JSON says, the Table 2
numbers of a hand-made VOC fixture are the hand-computed ones, and errors are one line.

One run of each command goes through a subprocess (``python -m dcnviz``, as a user runs it); the others
run in this process through click's test runner, which skips the seconds of starting Python and torch."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import dcnviz
from analysis_models import write_weights
from cli_helpers import ROOT, assert_one_line_error, run_cli
from dcnviz.analysis import LayerGeometry, sampling_locations
from dcnviz.analysis.units import pick_units, segment_boxes
from dcnviz.cli import main
from dcnviz.io.images import read_image

SYNTH = "rfcn_dcn_synth"
SAMPLE = ROOT / "samples" / "synth_mixed.jpg"  # 500x375; the synth models run it at scale 0.8, 20 px a cell
RED, GREEN, YELLOW = (0, 0, 255), (0, 255, 0), (0, 255, 255)  # BGR
RES5 = LayerGeometry(3, 2, 2, 1)


def cli(args, cwd, subprocess: bool = False):
    """``dcnviz ARGS --device cpu`` in ``cwd``: a subprocess, or in this process (same result fields)."""
    args = [str(a) for a in [*args, "--device", "cpu"]]
    if subprocess:
        return run_cli(args, cwd, fake=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        result = CliRunner().invoke(main, args, prog_name="dcnviz")
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


@pytest.fixture(scope="module")
def synth_weights(tmp_path_factory):
    return write_weights(SYNTH, tmp_path_factory.mktemp("w") / "rfcn_dcn_synth.safetensors")


@pytest.fixture(scope="module")
def deeplab_weights(tmp_path_factory):
    return write_weights("deeplab_dcn_synth", tmp_path_factory.mktemp("w") / "deeplab_dcn_synth.safetensors")


@pytest.fixture(scope="module")
def synth_result(synth_weights):
    """The random-weight model's prediction on SAMPLE, computed in this process."""
    return dcnviz.load_model(SYNTH, synth_weights, "cpu").predict(read_image(SAMPLE))


def record_of(proc, path: Path) -> dict:
    """The JSON a successful run wrote to ``path``."""
    assert proc.returncode == 0, proc.stderr
    return json.loads(path.read_text())


def pixel_at(figure: np.ndarray, panel, xy) -> tuple[int, ...]:
    """The figure's BGR colour at image position (x, y) of the panel starting at ``panel`` (left, top)."""
    return tuple(int(v) for v in figure[panel[1] + math.floor(xy[1]), panel[0] + math.floor(xy[0])])


def far_points(points, valid, unit_xy, image_size, margin=8.0, count=5):
    """Up to ``count`` valid points at least ``margin`` px from the unit and inside the image (drawn where
    they are, not clamped), spread over the list."""
    h, w = image_size
    keep = [p for p, v in zip(points, valid) if v and math.dist(p, unit_xy) > margin
            and 0 <= p[0] < w and 0 <= p[1] < h]
    assert len(keep) >= count
    return keep[:: max(len(keep) // count, 1)][:count]


def expected_points(result, unit_cell, layers, group, round=False):
    """Sampling points of a unit computed with the analysis functions from a prediction's offsets."""
    offsets = [result.captured[f"{name}_branch2b_offset"] for name in layers]
    found = sampling_locations(offsets, tuple(unit_cell), [RES5] * len(layers), group=group, round=round)
    return found.image_xy(result.prep.scale, 16), found


class TestOffsets:
    def test_points_match_the_analysis_and_land_where_the_json_says(self, tmp_path, synth_weights, synth_result):
        proc = cli(["offsets", SAMPLE, "--weights", synth_weights, "--at", "250,170", "--at", "60,300",
                    "-o", tmp_path / "out"], tmp_path, subprocess=True)
        record = record_of(proc, tmp_path / "out" / "synth_mixed_res5c.json")
        assert [layer["name"] for layer in record["layers"]] == ["res5c", "res5b", "res5a"]
        assert record["layers"][0] == {"name": "res5c", "kernel_size": [3, 3], "dilation": [2, 2], "padding": [2, 2],
                                       "stride": [1, 1], "deformable_groups": 1, "feature_stride": 16}
        assert (record["width"], record["height"], record["scale"], record["group"]) == (500, 375, 0.8, "all")
        # --at 250,170 is in cell (170 * 0.8 / 16, 250 * 0.8 / 16) = (8, 12), centre ((12.5, 8.5) * 20 px)
        assert [u["cell"] for u in record["units"]] == [[8, 12], [15, 3]]
        assert record["units"][0]["xy"] == [250.0, 170.0] and record["units"][1]["xy"] == [70.0, 310.0]
        figure = cv2.imread(str(tmp_path / "out" / "synth_mixed_res5c.png"))
        for unit in record["units"]:
            xy, found = expected_points(synth_result, unit["cell"], ["res5c", "res5b", "res5a"], "all")
            points = np.asarray(unit["points"])
            assert points.shape == (1, 729, 2)
            np.testing.assert_array_equal(points, np.round(xy, 2))  # written to a hundredth of a pixel
            assert unit["valid"] == found.valid.tolist() and unit["inside"] == found.inside.tolist()
            assert not np.allclose(points[0], points[0].round())  # the random offsets moved them off the grid
            assert pixel_at(figure, unit["panel"], unit["xy"]) == GREEN
            for p in far_points(points[0], unit["valid"][0], unit["xy"], (375, 500)):
                assert pixel_at(figure, unit["panel"], p) == RED, p

    def test_runs_on_the_bundled_samples_by_default(self, tmp_path, synth_weights):
        proc = cli(["offsets", "--layer", "res5c", "--levels", "2", "--weights", synth_weights], tmp_path)
        assert proc.returncode == 0, proc.stderr
        out = tmp_path / "runs" / "offsets"
        assert sorted(p.name for p in out.iterdir()) == [f"synth_{n}_res5c.{s}" for n in ("mixed", "rings", "stars")
                                                        for s in ("json", "png")]
        # the random weights detect nothing with score >= 0.5: only a background unit, at the cell farthest
        # from the border and nearest the centre of the 500x375 image: (190, 250) px, cell (9, 12)
        warning = "no small or large unit from the detections with score >= 0.5 (0 boxes); use --at or --annotation"
        assert proc.stderr.count(warning) == 3
        for path in out.glob("*.json"):
            (unit,) = json.loads(path.read_text())["units"]
            assert (unit["kind"], unit["cell"], np.shape(unit["points"])) == ("background", [9, 12], (1, 81, 2))
        again = cli(["offsets", SAMPLE, "--weights", synth_weights, "--at", "1,1"], tmp_path)
        assert again.returncode == 0 and (tmp_path / "runs" / "offsets2" / "synth_mixed_res5c.png").is_file()

    def test_units_chosen_on_an_annotation(self, tmp_path, synth_weights):
        boxes = {"large": (101, 51, 400, 300), "small": (21, 301, 60, 340), "medium": (421, 11, 480, 190)}
        xml = tmp_path / "a.xml"
        xml.write_text(voc_xml(500, 375, [(n, b, 0) for n, b in boxes.items()]))
        proc = cli(["offsets", SAMPLE, "--weights", synth_weights, "--annotation", xml, "-o", tmp_path / "out"],
                   tmp_path)
        units = {u["kind"]: u for u in record_of(proc, tmp_path / "out" / "synth_mixed_res5c.json")["units"]}
        assert list(units) == ["background", "small", "large"]
        # large: 0-based [100, 50, 399, 299], centre (250, 175) -> cell (8, 12); small [20, 300, 59, 339] -> (16, 2)
        assert (units["large"]["cell"], units["large"]["box"], units["large"]["bucket"]) == (
            [8, 12], [100.0, 50.0, 399.0, 299.0], "large")
        assert (units["small"]["cell"], units["small"]["bucket"]) == ([16, 2], "small")
        # background: a cell outside every box, as far as any from the boxes and the border (brute force)
        edges = [(x1 - 1, y1 - 1, x2, y2) for x1, y1, x2, y2 in boxes.values()]  # 0-based, right/bottom exclusive

        def clearance(i, j):
            x, y = (j + 0.5) * 20, (i + 0.5) * 20
            gaps = [math.hypot(max(x1 - x, x - x2, 0), max(y1 - y, y - y2, 0)) for x1, y1, x2, y2 in edges]
            return min(min(gaps), x, y, 500 - x, 375 - y) if min(gaps) > 0 else -1.0

        best = max(clearance(i, j) for i in range(19) for j in range(25))
        assert units["background"]["box"] is None and best > 0
        assert clearance(*units["background"]["cell"]) == pytest.approx(best, abs=1e-9)

    def test_units_on_segments_and_an_unreadable_image(self, tmp_path, deeplab_weights):
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"not a jpeg")
        image = tmp_path / SAMPLE.name
        image.write_bytes(SAMPLE.read_bytes())
        proc = cli(["offsets", image, broken, "--model", "deeplab_dcn_synth", "--weights", deeplab_weights,
                    "--levels", "1", "-o", tmp_path / "out"], tmp_path)
        assert proc.returncode == 1
        assert [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")] == [
            f"Error: cannot read image '{broken}': not an image file (unknown format); skipped"]
        record = json.loads((tmp_path / "out" / "synth_mixed_res5c.json").read_text())
        result = dcnviz.load_model("deeplab_dcn_synth", deeplab_weights, "cpu").predict(read_image(SAMPLE))
        boxes = segment_boxes(result.labels, skip=[0])  # class 0 is __background__
        expected = pick_units(boxes, (19, 25), 0.8, 16, (375, 500))
        assert len(boxes) and [(u["kind"], u["cell"]) for u in record["units"]] == [
            (u.kind, list(u.cell)) for u in expected]
        assert all(np.shape(u["points"]) == (1, 9, 2) for u in record["units"])

    def test_at_says_where_it_snapped_and_titles_say_the_size_class(self, tmp_path, synth_weights):
        proc = cli(["offsets", SAMPLE, "--weights", synth_weights, "--at", "255,172", "--levels", "1", "-o",
                    tmp_path / "out"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        # (255, 172) px is in cell (8, 12) (20 px a cell at scale 0.8), centred at (250, 170)
        assert "--at 255,172 is in cell (8, 12) of res5c; the unit is its centre (250.0, 170.0)" in proc.stderr
        svg_free = sorted(p.suffix for p in (tmp_path / "out").iterdir())
        assert svg_free == [".json", ".png"]

    def test_round_reads_offsets_at_the_nearest_cell(self, tmp_path, synth_weights, synth_result):
        proc = cli(["offsets", SAMPLE, "--weights", synth_weights, "--at", "250,170", "--round", "--group", "0",
                    "-o", tmp_path / "out"], tmp_path)
        record = record_of(proc, tmp_path / "out" / "synth_mixed_res5c.json")
        assert (record["group"], record["interpolation"]) == (0, "nearest cell")
        xy, _ = expected_points(synth_result, (8, 12), ["res5c", "res5b", "res5a"], 0, round=True)
        np.testing.assert_array_equal(record["units"][0]["points"], np.round(xy, 2))


class TestReceptiveField:
    def test_plain_grid_beside_the_deformable_points(self, tmp_path, synth_weights, synth_result):
        proc = cli(["receptive-field", SAMPLE, "--weights", synth_weights, "--at", "250,170", "--at", "430,90",
                    "-o", tmp_path / "out"], tmp_path, subprocess=True)
        record = record_of(proc, tmp_path / "out" / "synth_mixed_res5c.json")
        assert (record["model"], record["plain_model"]) == (SYNTH, "rfcn_synth")
        assert [layer["name"] for layer in record["layers"]["plain"]] == ["res5c", "res5b"]
        figure = cv2.imread(str(tmp_path / "out" / "synth_mixed_res5c.png"))
        for unit in record["units"]:
            i, j = unit["cell"]
            # two 3x3 convs of dilation 2: point 9*k0 + k1 goes through tap k0 = 3*a0 + b0 of res5c, then tap
            # k1 = 3*a1 + b1 of res5b, to cell (i + 2*a0 - 2 + 2*a1 - 2, j + ...), 20 px a cell
            grid = [((j + 2 * (b0 + b1) - 4 + 0.5) * 20, (i + 2 * (a0 + a1) - 4 + 0.5) * 20)
                    for a0 in range(3) for b0 in range(3) for a1 in range(3) for b1 in range(3)]
            np.testing.assert_array_equal(unit["plain"]["points"], [grid])
            xy, _ = expected_points(synth_result, unit["cell"], ["res5c", "res5b"], "all")
            np.testing.assert_array_equal(unit["deformable"]["points"], np.round(xy, 2))
            for row in ("plain", "deformable"):
                assert pixel_at(figure, unit[row]["panel"], unit["xy"]) == GREEN
                points = np.asarray(unit[row]["points"])[0]
                for p in far_points(points, unit[row]["valid"][0], unit["xy"], (375, 500), count=3):
                    assert pixel_at(figure, unit[row]["panel"], p) == RED

    def test_deeplab_twins(self, tmp_path, deeplab_weights):
        proc = cli(["receptive-field", SAMPLE, "--model", "deeplab_dcn_synth", "--weights", deeplab_weights,
                    "--at", "250,170"], tmp_path)
        record = record_of(proc, tmp_path / "runs" / "receptive-field" / "synth_mixed_res5c.json")
        assert record["plain_model"] == "deeplab_synth"
        assert np.shape(record["units"][0]["deformable"]["points"]) == (1, 81, 2)


class TestRois:
    def test_given_box_parts_moved_by_the_offsets(self, tmp_path):
        # every class and part offset (dx, dy) = (0.5, -0.25): with trans_std 0.1 each part moves by 5% of
        # the RoI width right and 2.5% of its height up
        weights = write_weights(SYNTH, tmp_path / "w.safetensors", part_offset=(0.5, -0.25))
        proc = cli(["rois", SAMPLE, "--weights", weights, "--box", "100,50,299,249", "--class", "ring",
                    "-o", tmp_path / "out"], tmp_path, subprocess=True)
        record = record_of(proc, tmp_path / "out" / "synth_mixed.json")
        assert (record["pooled_size"], record["part_size"], record["trans_std"]) == (7, 7, 0.1)
        (roi,) = record["rois"]
        assert (roi["class_name"], roi["class_id"], roi["source"], roi["detection_score"]) == ("ring", 3, "box", None)
        # scale 0.8: input RoI round(80, 40, 239.2, 199.2) = (80, 40, 239, 199), i.e. input pixels 80..239 and
        # 40..199, back in image pixels the edges 100..300 and 50..250
        assert roi["roi"] == pytest.approx([100, 50, 300, 250], abs=1e-9)
        regular, parts = np.asarray(roi["regular_parts"]), np.asarray(roi["parts"])
        step = 200 / 7
        for ph in range(7):
            for pw in range(7):
                assert regular[ph, pw] == pytest.approx([100 + pw * step, 50 + ph * step, 100 + (pw + 1) * step,
                                                         50 + (ph + 1) * step], abs=0.005)  # written to 0.01 px
        np.testing.assert_allclose(parts - regular, np.broadcast_to([10, -5, 10, -5], parts.shape), atol=0.011)
        figure = cv2.imread(str(tmp_path / "out" / "synth_mixed.png"))
        centre = parts[3, 3]
        assert pixel_at(figure, roi["panel"], centre[:2]) == RED
        assert pixel_at(figure, roi["panel"], (100, 150)) == YELLOW  # left RoI edge, left free by the shift

    def test_top_detections(self, tmp_path, synth_weights):
        proc = cli(["rois", SAMPLE, "--weights", synth_weights, "--top", "2", "--conf", "0", "-o", tmp_path / "out"],
                   tmp_path)
        rois = record_of(proc, tmp_path / "out" / "synth_mixed.json")["rois"]
        assert len(rois) == 2 and [r["source"] for r in rois] == ["detection", "detection"]
        assert rois[0]["detection_score"] >= rois[1]["detection_score"]
        assert all(np.shape(r["parts"]) == (7, 7, 4) for r in rois)

    def test_three_by_three_view_json_vector_and_many_inputs(self, tmp_path, synth_weights, synth_result):
        """--parts 3 beside the 7x7 parts; the label is the detection's own score; --json prints the record;
        --format svg adds a vector copy; a missing input among several is reported and skipped (exit 1)."""
        proc = cli(["rois", SAMPLE, tmp_path / "nope.jpg", "--weights", synth_weights, "--top", "1", "--conf", "0",
                    "--parts", "3", "--format", "svg", "--json", "-o", tmp_path / "out"], tmp_path)
        assert proc.returncode == 1
        assert [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")] == [
            f"Error: cannot read image '{tmp_path / 'nope.jpg'}': no such file; skipped"]
        out = tmp_path / "out"
        files = sorted(p.name for p in out.rglob("*") if p.is_file())
        assert files == ["synth_mixed.json", "synth_mixed.png", "synth_mixed.svg"]
        record = json.loads((out / "synth_mixed.json").read_text())
        assert [json.loads(line) for line in proc.stdout.splitlines()] == [record]
        (roi,) = record["rois"]
        assert roi["detection_score"] == round(float(synth_result.scores[0]), 4)
        coarse = roi["coarse"]
        assert coarse["size"] == 3 and np.shape(coarse["parts"]) == (3, 3, 4)
        # the unmoved 3x3 view tiles the same RoI as the 7x7 parts
        assert coarse["regular_parts"][0][0][:2] == roi["regular_parts"][0][0][:2]
        assert coarse["regular_parts"][2][2][2:] == roi["regular_parts"][6][6][2:]
        svg = (out / "synth_mixed.svg").read_text()
        label = f"{roi['class_name']} {synth_result.scores[0]:.2f}"
        assert svg.count(f">{label}: 7x7 parts (detection 1)</text>") == 1
        assert svg.count(f">{label}: 3x3 view of the 7x7 offsets</text>") == 1
        figure = cv2.imread(str(out / "synth_mixed.png"))
        assert figure.shape[1] > 2 * 500  # two panels side by side


def voc_xml(width, height, objects) -> str:
    """A VOC annotation; ``objects`` are (name, 1-based (xmin, ymin, xmax, ymax), difficult)."""
    body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}"
                   f"</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return (f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{body}</annotation>")


# 400x300 images run at scale 1: res5 maps of 19x25 cells, cell (i, j) centred at (16j + 8, 16i + 8) px.
# Boxes, 1-based as in the XML (0-based inclusive = minus 1), and the cells whose centre they hold:
FIXTURE_OBJECTS = [
    ("blob", (1, 1, 72, 72), 0),        # [0, 72) px: centres 8..56, 4x4 = 16 cells, area 5184: small
    ("ring", (1, 1, 32, 32), 1),        # difficult, inside the small box: those cells stay small
    ("star", (161, 65, 392, 296), 0),   # [160, 392) x [64, 296): 14x14 = 196 cells, area 232² = 53824: large
    ("worm", (193, 97, 304, 192), 0),   # [192, 304) x [96, 192): 7x6 = 42 cells, area 112x96 = 10752: medium
    ("cross", (1, 161, 80, 240), 1),    # difficult only: 5x5 = 25 cells left out
]
# per image: small 16, medium 42, large 196 - 42 = 154, background 475 - 16 - 196 - 25 = 238
COUNTS = {"small": 16, "medium": 42, "large": 154, "background": 238}
# constant offsets (dy, dx per tap): res5c none (2.0), res5b every outer tap one cell outward (3.0),
# res5a the right column one cell right (12 pairs: 3 of 3, 3 of 2 horizontally, 6 of 2 vertically = 2.25)
OUTWARD = [v for k in range(9) for v in (k // 3 - 1.0, k % 3 - 1.0)]
RIGHT = [v for k in range(9) for v in (0.0, 1.0 if k % 3 == 2 else 0.0)]
DILATION = {"res5c": 2.0, "res5b": 3.0, "res5a": 2.25}


@pytest.fixture
def voc_fixture(tmp_path):
    root = tmp_path / "VOC"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    image = np.full((300, 400, 3), 127, np.uint8)
    for image_id in ("000001", "000002", "000005"):
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), image)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(400, 300, FIXTURE_OBJECTS))
    (root / "Annotations" / "000003.xml").write_text(voc_xml(400, 300, FIXTURE_OBJECTS))  # its image is missing
    cv2.imwrite(str(root / "JPEGImages" / "000004.jpg"), image)
    (root / "Annotations" / "000004.xml").write_text("<annotation><size><width>400</wid")  # malformed
    (root / "Annotations" / "000005.xml").write_text(voc_xml(500, 375, FIXTURE_OBJECTS))  # wrong size
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000003\n000004\n000002\n000005\n")
    return root


class TestDilationStats:
    def test_hand_computed_table_and_broken_entries(self, tmp_path, voc_fixture):
        weights = write_weights(SYNTH, tmp_path / "w.safetensors", offsets={"res5b": OUTWARD, "res5a": RIGHT})
        proc = cli(["dilation-stats", "--data", voc_fixture, "--weights", weights, "--compare-paper", "-o", tmp_path / "out"],
                   tmp_path, subprocess=True)
        assert proc.returncode == 1, proc.stderr  # broken entries were skipped
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 3 and "Traceback" not in proc.stderr
        assert f"image {voc_fixture / 'JPEGImages' / '000003.jpg'} does not exist; skipped" in errors[0]
        assert f"{voc_fixture / 'Annotations' / '000004.xml'}: malformed XML" in errors[1]
        assert "000005.xml is for a 500x375 image, but" in errors[2] and "is 400x300" in errors[2]

        stats = json.loads((tmp_path / "out" / "stats.json").read_text())
        assert list(stats["layers"]) == ["res5c", "res5b", "res5a"]
        for layer, cells in stats["layers"].items():
            assert cells == {b: {"mean": DILATION[layer], "std": 0.0, "n": 2 * n} for b, n in COUNTS.items()}
        config = stats["config"]
        assert (config["images"], config["images_listed"], config["model"], config["split"]) == (2, 5, SYNTH, "test")
        assert [s["id"] for s in config["skipped"]] == ["000003", "000004", "000005"]
        assert config["small_max_area"] == 96 ** 2 and "smallest-area non-difficult" in config["assignment"]
        assert stats["paper"]["res5c"]["large"] == {"mean": 8.4, "std": 4.5}

        with open(tmp_path / "out" / "stats.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 12 and rows[0] == {"layer": "res5c", "bucket": "small", "mean": "2.0", "std": "0.0",
                                                "n": "32", "paper_mean": "5.3", "paper_std": "3.3"}
        for layer in DILATION:
            assert cv2.imread(str(tmp_path / "out" / f"hist_{layer}.png")) is not None

        lines = proc.stdout.splitlines()
        assert "(test, 2 images)" in lines[0]
        assert lines[1].split() == ["layer", "small", "medium", "large", "background"]
        assert lines[2].split() == ["res5c", "2.00", "±", "0.00", "(N=32)", "2.00", "±", "0.00", "(N=84)", "2.00",
                                    "±", "0.00", "(N=308)", "2.00", "±", "0.00", "(N=476)"]
        assert lines[3].split()[:4] == ["paper", "5.3", "±", "3.3"]
        assert lines[6].split()[:5] == ["res5a", "2.25", "±", "0.00", "(N=32)"]
        assert "skipped: 3 of 5 images (000003, 000004, 000005)" in proc.stderr
        assert lines[-1].startswith("Rules: ") and "--explain" in lines[-1]  # one line; --explain lists them

    def test_explain_json_and_the_old_positional_dataset(self, tmp_path, voc_fixture):
        weights = write_weights(SYNTH, tmp_path / "w.safetensors", offsets="zero")
        proc = cli(["dilation-stats", voc_fixture, "--weights", weights, "--limit", "1", "--explain"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert [ln for ln in proc.stderr.splitlines() if ln.startswith("Deprecated:")] == [
            f"Deprecated: 'dcnviz dilation-stats {voc_fixture}' still works for this release; use "
            f"'dcnviz dilation-stats --data {voc_fixture}'"]
        rules = proc.stdout.split("Rules:\n")[1].splitlines()
        assert len(rules) > 10 and all(ln.startswith("  ") for ln in rules)
        proc = cli(["dilation-stats", "--data", voc_fixture, "--weights", weights, "--limit", "1", "--json", "-o",
                    tmp_path / "j"], tmp_path)
        assert json.loads(proc.stdout) == json.loads((tmp_path / "j" / "stats.json").read_text())

    def test_limit_and_a_clean_split(self, tmp_path, voc_fixture):
        weights = write_weights(SYNTH, tmp_path / "w.safetensors", offsets="zero")
        proc = cli(["dilation-stats", "--data", voc_fixture, "--weights", weights, "--limit", "1"], tmp_path)
        stats = record_of(proc, tmp_path / "runs" / "dilation-stats" / "stats.json")
        assert stats["config"]["images"] == 1 and stats["config"]["limit"] == 1
        for cells in stats["layers"].values():  # zero offsets: every filter has exactly its dilation
            assert cells == {b: {"mean": 2.0, "std": 0.0, "n": n} for b, n in COUNTS.items()}


class TestErrors:
    @pytest.mark.parametrize("args, fragments", [
        (["offsets", "--model", "rfcn_dcn_sytnh"], ["'--model'", "unknown model", "did you mean rfcn_dcn_synth"]),
        (["offsets", "--model", "rfcn_synth"], ["'--model'", "'rfcn_synth' has no deformable conv layers"]),
        (["offsets", "--layer", "res4a"], ["'--layer'", "no deformable layer 'res4a'", "res5a, res5b, res5c"]),
        (["offsets", "--layer", "res5b", "--levels", "3"], ["'--levels'", "there are 2 (res5b, res5a)"]),
        (["offsets", "--at", "12"], ["'--at'", "expected X,Y"]),
        (["offsets", "--group", "x"], ["'--group'"]),
        (["rois", "img.jpg", "--model", "rfcn_synth"], ["'--model'", "no deformable RoI pooling",
                                                        "rfcn_dcn_coco, rfcn_dcn_synth"]),
        (["rois", "img.jpg", "--model", "deeplab_dcn_synth"], ["no deformable RoI pooling"]),
        (["rois", "img.jpg", "--box", "5,5,1,1"], ["'--box'", "X2 must be >= X1"]),
        (["rois", "img.jpg", "--top", "2", "--box", "1,1,5,5"], ["either --top or --box"]),
        (["receptive-field", "img.jpg", "--model", "deform_conv"], ["'--model'", "no registered plain twin"]),
        (["receptive-field", "img.jpg", "--plain", "rfcn_dcn_synth"], ["'--plain'", "not a plain twin",
                                                                       "DeformConv2d"]),
        (["dilation-stats", "--data", "data", "--model", "deeplab_synth"], ["has no deformable conv layers"]),
    ])
    def test_usage_errors_exit_2_before_loading_weights(self, tmp_path, args, fragments):
        assert_one_line_error(cli(args, tmp_path), 2, *fragments)
        assert not (tmp_path / "runs").exists()

    def test_at_outside_the_image(self, tmp_path, synth_weights):
        proc = cli(["offsets", SAMPLE, "--weights", synth_weights, "--at", "500,10"], tmp_path)
        assert_one_line_error(proc, 2, "'--at'", "500,10 is outside the 500x375 image")
        assert not (tmp_path / "runs").exists()  # the output folder it had made is gone, and runs/ with it

    def test_missing_inputs_exit_1(self, tmp_path, synth_weights):
        assert_one_line_error(cli(["dilation-stats", "--data", tmp_path / "nope", "--weights", synth_weights], tmp_path), 1,
                              "dataset folder", "does not exist")
        assert_one_line_error(cli(["rois", tmp_path / "nope.jpg", "--weights", synth_weights], tmp_path), 1,
                              "nope.jpg", "no such file")
        assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """rfcn_dcn_coco (ResNet-101, 4 deformable groups, 7x7 deformable PS RoI pooling) with random weights
    (a 250 MB file), and a 1000x64 image: the official preprocessing keeps it at scale 1 (its long side
    is the 1000-pixel limit), the smallest input that still has a 4x63 res5 map."""
    folder = tmp_path_factory.mktemp("coco")
    image = np.full((64, 1000, 3), 120, np.uint8)
    image[:, ::40] = 30
    cv2.imwrite(str(folder / "wide.png"), image)
    return write_weights("rfcn_dcn_coco", folder / "rfcn_dcn_coco.safetensors"), folder / "wide.png"


class TestOfficialModel:
    def test_offsets_with_four_groups(self, tmp_path, coco):
        weights, image = coco
        proc = cli(["offsets", image, "--model", "rfcn_dcn_coco", "--weights", weights, "--at", "500,30",
                    "-o", tmp_path / "out"], tmp_path)
        record = record_of(proc, tmp_path / "out" / "wide_res5c.json")
        assert [layer["deformable_groups"] for layer in record["layers"]] == [4, 4, 4]
        (unit,) = record["units"]
        assert unit["cell"] == [1, 31] and np.shape(unit["points"]) == (4, 729, 2)
        figure = cv2.imread(str(tmp_path / "out" / "wide_res5c.png"))
        assert pixel_at(figure, unit["panel"], unit["xy"]) == GREEN
        from dcnviz.viz.sampling import GROUP_COLORS

        for g in range(4):
            for p in far_points(unit["points"][g], unit["valid"][g], unit["xy"], (64, 1000), count=3):
                assert pixel_at(figure, unit["panel"], p) in GROUP_COLORS[:4]

    def test_rois_seven_by_seven_parts(self, tmp_path, coco):
        weights, image = coco
        proc = cli(["rois", image, "--model", "rfcn_dcn_coco", "--weights", weights, "--box", "400,8,599,55",
                    "--class", "dog", "-o", tmp_path / "out"], tmp_path)
        (roi,) = record_of(proc, tmp_path / "out" / "wide.json")["rois"]
        assert roi["class_name"] == "dog" and roi["roi"] == pytest.approx([400, 8, 600, 56], abs=1e-9)
        assert np.shape(roi["parts"]) == (7, 7, 4)
        assert not np.allclose(roi["parts"], roi["regular_parts"])  # the random offsets moved the parts


@pytest.fixture(scope="module")
def fpn(tmp_path_factory, coco):
    """fpn_dcn_coco with random weights (a 290 MB file) and the same 1000x64 image: scale 1.28 (long side
    1280), padded to 96x1280."""
    folder = tmp_path_factory.mktemp("fpn")
    return write_weights("fpn_dcn_coco", folder / "fpn_dcn_coco.safetensors"), coco[1]


def test_rois_fpn_bins_on_the_assigned_level(tmp_path, fpn):
    """FPN DCN: deformable RoI pooling's 7x7 bins (one offset field for every class), pooled on the level
    of the official rule: the box becomes the input RoI round(box * 1.28) = 512, 10, 767, 70, i.e.
    sqrt(256 * 61) = 125 px, floor(2 + log2(125 / 224)) = 1 -> P3 at 1/8."""
    weights, image = fpn
    proc = cli(["rois", image, "--model", "fpn_dcn_coco", "--weights", weights, "--box", "400,8,599,55",
                "--class", "dog", "-o", tmp_path / "out"], tmp_path)
    record = record_of(proc, tmp_path / "out" / "wide.json")
    assert record["branch"] == "shared" and record["pooled_size"] == 7
    (roi,) = record["rois"]
    assert roi["class_name"] == "dog" and (roi["level"], roi["spatial_scale"]) == (3, 0.125)
    assert np.shape(roi["parts"]) == (7, 7, 4)
    # the RoI as pooled: input pixels 512 .. 767 + 1 and 10 .. 70 + 1, in image pixels
    assert roi["roi"] == pytest.approx([400, 10 / 1.28, 600, 71 / 1.28], abs=0.005)  # JSON: 1/100 px
    assert not np.allclose(roi["parts"], roi["regular_parts"])  # the random offsets moved the bins
