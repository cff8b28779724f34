"""``dcnviz effective`` on the bundled architecture with random weights: the JSON holds what
dcnviz.analysis.effective computes (taps in tap order where the sampling conventions put them, weights,
the region), the .npy is the effective receptive field at the network input size, errors are one line.
One run goes through a subprocess, the others through click's runner in this process."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import dcnviz
from analysis_models import write_weights
from cli_helpers import ROOT, assert_one_line_error
from dcnviz.analysis import feature_to_image
from dcnviz.analysis.effective import Node, effective_receptive_field, node_gradients
from dcnviz.io.images import read_image
from dcnviz.models.capture import probe
from test_analysis_cli import cli

SYNTH = "rfcn_dcn_synth"
SAMPLE = ROOT / "samples" / "synth_mixed.jpg"  # 500x375 -> network input 400x300, 19x25 res5 cells


@pytest.fixture(scope="module")
def synth_weights(tmp_path_factory):
    return write_weights(SYNTH, tmp_path_factory.mktemp("w") / "rfcn_dcn_synth.safetensors")


@pytest.fixture(scope="module")
def run(synth_weights, tmp_path_factory):
    """One subprocess run: a unit at (200, 150) and the best detection, 2 levels, 64-px saliency cells."""
    cwd = tmp_path_factory.mktemp("run")
    proc = cli(["effective", SAMPLE, "-w", synth_weights, "--at", "200,150", "--detection", "0", "--levels", "2",
                "--cell", "64"], cwd, subprocess=True)
    assert proc.returncode == 0, proc.stderr
    out = cwd / "runs" / "effective"
    return json.loads((out / "synth_mixed_res5c.json").read_text()), out


def test_files_and_layout(run):
    record, out = run
    assert (out / "synth_mixed_res5c.png").is_file()
    erf = np.load(out / record["erf"])
    assert erf.dtype == np.float32 and erf.shape == (2, 300, 400)  # nodes x network input
    assert record["input_size"] == [300, 400] and [l["name"] for l in record["layers"]] == ["res5c", "res5b"]
    unit, det = record["nodes"]
    assert unit["kind"] == "at" and det["kind"] == "detection" and det["index"] == 0
    for node in (unit, det):
        assert [l["name"] for l in node["layers"]] == ["res5c", "res5b"]
        assert node["erf_index"] in (0, 1) and len(node["panels"]) == 4
        region = node["region"]
        assert 0 < region["area"] <= 500 * 375 and region["error"] <= region["bound"] == 0.1
        assert region["cell_size"] == 64 and region["total_cells"] == 5 * 7
        assert region["area"] == pytest.approx(region["area_input_pixels"] / 0.8 ** 2)
    assert len(det["bins"]["weight"]) == 7 and len(det["bins"]["parts"]) == 7
    assert np.count_nonzero(det["bins"]["weight"]) > 0


def test_values_match_the_library(run, synth_weights):
    """The unit's taps: tap order, positions by the sampling conventions, weights and the receptive field as
    node_gradients gives them for the same model and image."""
    record, out = run
    unit = record["nodes"][0]
    model = dcnviz.load_model(SYNTH, synth_weights, "cpu")
    image = read_image(SAMPLE)
    data, prep = model.preprocess(image)
    grads = node_gradients(probe(model), data, [Node("res5c", tuple(unit["cell"]))], levels=2)[0]
    assert unit["value"] == pytest.approx(grads.value, rel=1e-4)
    top = unit["layers"][0]
    assert top["taps"] == list(range(9)) and top["groups"] == [0] * 9 and top["cells"] == [unit["cell"]] * 9
    offsets = model.predict(image).captured["res5c_branch2b_offset"][0].double().numpy()
    i, j = unit["cell"]
    k = np.arange(9)
    yx = np.stack([i - 2 + 2 * (k // 3) + offsets[2 * k, i, j], j - 2 + 2 * (k % 3) + offsets[2 * k + 1, i, j]], -1)
    assert np.allclose(top["xy"], feature_to_image(yx, prep.scale, 16)[:, ::-1], atol=1e-3)
    weight = np.hypot(grads.layers[0].grad[0, :, 0, i, j], grads.layers[0].grad[0, :, 1, i, j])
    assert np.allclose(top["weight"], weight, rtol=1e-3, atol=1e-6 * weight.max())
    lower = unit["layers"][1]
    assert len(lower["weight"]) > 9 and min(lower["weight"]) > 0 and len(lower["xy"]) == len(lower["taps"])
    erf = np.load(out / record["erf"])[unit["erf_index"]]
    expected = effective_receptive_field(grads)
    assert np.allclose(erf, expected, rtol=1e-3, atol=1e-4 * expected.max())


def test_channel_and_errors(synth_weights, tmp_path):
    proc = cli(["effective", SAMPLE, "-w", synth_weights, "--at", "100,100", "--channel", "3", "--levels", "1",
                "--cell", "100", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "runs" / "effective" / "synth_mixed_res5c.json").read_text())
    (node,) = record["nodes"]
    assert node["channel"] == 3 and [l["name"] for l in node["layers"]] == ["res5c"]
    for args, param in [(["--channel", "128"], "--channel"), (["--detection", "1000"], "--detection"),
                        (["--layer", "res4a"], "--layer"), (["--levels", "4"], "--levels"),
                        (["--at", "900,10"], "--at")]:
        proc = cli(["effective", SAMPLE, "-w", synth_weights, *args], tmp_path)
        assert_one_line_error(proc, 2, param)
    proc = cli(["effective", SAMPLE, "-m", "deeplab_dcn_synth", "--detection", "0"], tmp_path)
    assert_one_line_error(proc, 2, "--detection", "segmentation")
    proc = cli(["effective", tmp_path / "missing.jpg", "-w", synth_weights], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_many_inputs_and_vector_output(synth_weights, tmp_path):
    """Two images and a missing one: the missing one is reported and skipped, the others written, exit 1.
    --format svg: a valid SVG beside each PNG whose markers are the plain points and every point of positive
    weight of every layer (the default style's unit is a polygon, not a marker)."""
    import xml.etree.ElementTree as ET

    from cli_helpers import svg_markers
    from dcnviz.viz.vector import GID

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(SAMPLE.read_bytes())
    (folder / "b.jpg").write_bytes((ROOT / "samples" / "synth_stars.jpg").read_bytes())
    proc = cli(["effective", folder / "a.jpg", tmp_path / "nope.jpg", str(folder / "b*.jpg"), "-w", synth_weights,
                "--at", "200,150", "--levels", "2", "--cell", "100", "--format", "svg", "--json", "-o",
                tmp_path / "out"], tmp_path)
    assert proc.returncode == 1
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")] == [
        f"Error: cannot read image '{tmp_path / 'nope.jpg'}': no such file; skipped"]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        f"{s}_res5c{x}" for s in "ab" for x in (".json", ".png", ".svg", "_erf.npy")]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["image"] for r in records] == ["images/a.jpg", "images/b.jpg"]  # relative to the working folder
    for stem, record in zip("ab", records):
        assert record == json.loads((out / f"{stem}_res5c.json").read_text())
        svg = (out / f"{stem}_res5c.svg").read_bytes()
        (node,) = record["nodes"]
        plain = np.asarray(node["points"]).reshape(-1, 2)
        weighted = sum(int(np.count_nonzero(layer["weight"])) for layer in node["layers"])
        assert len(plain) == 81 and weighted > 9
        assert svg_markers(svg, GID["points"]) + svg_markers(svg, GID["hollow"]) == len(plain)
        assert svg_markers(svg, GID["weighted"]) == weighted
        root = ET.fromstring(svg)
        assert sum(1 for e in root.iter() if e.tag.endswith("}image")) == 4  # the pictures stay raster


def test_paper_style_and_pdf(synth_weights, tmp_path):
    """--style paper --marker-alpha --format pdf: a PDF beside the PNG, the unit drawn as the paper's green
    square on every view."""
    proc = cli(["effective", SAMPLE, "-w", synth_weights, "--at", "200,150", "--levels", "1", "--cell", "100",
                "--style", "paper", "--marker-alpha", "0.5", "--format", "pdf", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "effective"
    assert (out / "synth_mixed_res5c.pdf").read_bytes().startswith(b"%PDF")
    record = json.loads((out / "synth_mixed_res5c.json").read_text())
    figure = read_image(out / "synth_mixed_res5c.png")
    (node,) = record["nodes"]
    x, y = (math.floor(v) for v in node["xy"])
    half = 2 + 2  # the paper's unit: a square 2 px wider than a 5x5 sample marker (500x375 image)
    for left, top in node["panels"][1:]:
        square = figure[top + y - half:top + y + half + 1, left + x - half:left + x + half + 1]
        assert (square == (0, 255, 0)).all()


def test_show_without_a_display(synth_weights, tmp_path, monkeypatch):
    """--show where no window can be opened: one warning line, the files written, exit 0."""
    from dcnviz.viz import show

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(show.sys, "platform", "linux")
    proc = cli(["effective", SAMPLE, "-w", synth_weights, "--at", "100,100", "--levels", "1", "--cell", "100",
                "--show"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if "--show" in ln] == [
        "Warning: --show: no display (DISPLAY and WAYLAND_DISPLAY are not set); results are saved only"]
    assert (tmp_path / "runs" / "effective" / "synth_mixed_res5c.png").is_file()


def test_missing_detection_among_several_images(synth_weights, tmp_path):
    """--detection K that an image lacks: a usage error for one image (exit 2, above), reported and skipped
    among several (exit 1)."""
    stars = ROOT / "samples" / "synth_stars.jpg"
    proc = cli(["effective", SAMPLE, stars, "-w", synth_weights, "--detection", "1000", "--levels", "1",
                "-o", tmp_path / "out"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 2 and all(ln.startswith("Error: --detection 1000: rfcn_dcn_synth found ") and
                                    ln.endswith("; skipped") for ln in errors)
    assert "Results saved" not in proc.stderr and not (tmp_path / "out").exists()  # nothing written, no folder
