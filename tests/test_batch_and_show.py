"""``detect``/``segment --batch N``: network inputs of the same size run in one forward, others in smaller
batches; the results equal one image at a time (random weights, the bundled architectures, in process).
``--show`` (detect, segment, the figure commands): a window gets every picture where one can be opened,
else one warning line and the run goes on."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dcnviz
from analysis_models import write_weights
from cli_helpers import ROOT
from dcnviz.io.images import read_image
from dcnviz.models.batching import predict_batch
from test_analysis_cli import cli

# three 500x375 scenes and two photos of other sizes (500x500, 500x333)
SAMPLES = sorted((ROOT / "samples").glob("synth_*.jpg")) + [ROOT / "samples" / "photo_astronaut.jpg",
                                                              ROOT / "samples" / "photo_chelsea.jpg"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for path in SAMPLES:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.mark.parametrize("model", ["rfcn_dcn_synth", "deeplab_dcn_synth"])
def test_predict_batch_equals_one_at_a_time(tmp_path, model):
    net = dcnviz.load_model(model, write_weights(model, tmp_path / "w.safetensors"), "cpu")
    images = [read_image(p) for p in SAMPLES]
    assert len({im.shape for im in images}) == 3
    one_by_one = [net.predict(im) for im in images]
    forwards, forward = [], net.backbone.forward  # one backbone call per network forward
    net.backbone.forward = lambda data, *a, **k: forwards.append(len(data)) or forward(data, *a, **k)
    batched = predict_batch(net, images)
    assert sorted(forwards) == [1, 1, 3]  # the three scenes in one forward, each photo alone
    for one, many in zip(one_by_one, batched):
        assert set(one.captured) == set(many.captured)
        for k in one.captured:
            assert many.captured[k].shape == one.captured[k].shape
            assert np.allclose(many.captured[k], one.captured[k], atol=1e-5)
        if model.startswith("rfcn"):
            assert len(one) > 0 and np.array_equal(one.labels, many.labels)
            assert np.allclose(one.boxes, many.boxes, atol=1e-5) and np.allclose(one.scores, many.scores, atol=1e-5)
        else:
            assert np.array_equal(one.labels, many.labels)


def test_detect_batch_equals_batch_one(tmp_path, folder):
    weights = write_weights("rfcn_dcn_synth", tmp_path / "w.safetensors")
    runs = {}
    for batch in (1, 3):
        proc = cli(["detect", folder, "-m", "rfcn_dcn_synth", "-w", weights, "--conf", "0.01", "--batch", batch,
                    "--json", "-o", tmp_path / f"b{batch}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        runs[batch] = [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr
    (one, log_one), (three, log_three) = runs[1], runs[3]
    assert [r["image"] for r in one] == [r["image"] for r in three] and len(one) == 5
    assert sum(len(r["detections"]) for r in one) > 5
    for a, b in zip(one, three):
        assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]]
        for da, db in zip(a["detections"], b["detections"]):
            assert np.allclose(da["box"], db["box"], atol=1e-5) and abs(da["score"] - db["score"]) <= 1e-5
    assert "(batch of" not in log_one
    assert log_three.count("(batch of 3)") == 3 and log_three.count("(batch of 2)") == 2
    assert "batches of up to 3" in log_three


def test_segment_batch(tmp_path, folder):
    weights = write_weights("deeplab_dcn_synth", tmp_path / "w.safetensors")
    for batch in (1, 4):
        proc = cli(["segment", folder, "-m", "deeplab_dcn_synth", "-w", weights, "--batch", batch, "-q", "-o",
                    tmp_path / f"b{batch}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
    for mask in sorted((tmp_path / "b1" / "masks").iterdir()):
        assert np.array_equal(read_image(mask), read_image(tmp_path / "b4" / "masks" / mask.name))


class TestShow:
    """--show: one warning line without a display (exit 0, files written); with one, every drawn picture goes
    to the window (a recording stand-in for the toolkit here)."""

    def test_no_display_warns_once_and_goes_on(self, tmp_path, folder, monkeypatch):
        from dcnviz.viz import show

        monkeypatch.delenv("DISPLAY", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        monkeypatch.setattr(show.sys, "platform", "linux")
        weights = write_weights("deeplab_dcn_synth", tmp_path / "w.safetensors")
        proc = cli(["segment", folder / "synth_mixed.jpg", folder / "synth_stars.jpg", "-m", "deeplab_dcn_synth",
                    "-w", weights, "--show",
                    "-o", tmp_path / "out"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        warnings = [ln for ln in proc.stderr.splitlines() if "--show" in ln]
        assert warnings == ["Warning: --show: no display (DISPLAY and WAYLAND_DISPLAY are not set); results are "
                            "saved only"]
        assert len(list((tmp_path / "out" / "vis").iterdir())) == 2

    def test_headless_opencv_without_an_interactive_backend(self, monkeypatch):
        from dcnviz.viz import show

        monkeypatch.setenv("DISPLAY", ":0")
        monkeypatch.setattr(show.sys, "platform", "linux")
        monkeypatch.setattr(show, "_opencv_has_gui", lambda: False)
        monkeypatch.setattr(show, "_interactive_pyplot", lambda: None)
        lines = []
        assert show.open_window("t", lines.append) is None
        assert lines == ["Warning: --show: OpenCV has no GUI (opencv-python-headless) and matplotlib has no "
                         "interactive backend; results are saved only"]

    def test_the_window_gets_every_picture(self, tmp_path, folder, monkeypatch):
        from dcnviz.viz import show

        shown, closed = [], []

        class Window:
            def show(self, picture, caption, delay):
                shown.append((picture.shape, caption, delay))

            def close(self):
                closed.append(True)

        monkeypatch.setattr(show, "open_window", lambda title, warn: Window())
        weights = write_weights("rfcn_dcn_synth", tmp_path / "w.safetensors")
        proc = cli(["detect", folder / "synth_mixed.jpg", folder / "photo_astronaut.jpg", "-m", "rfcn_dcn_synth",
                    "-w", weights, "--show",
                    "-q", "-o", tmp_path / "out"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert shown == [((500, 500, 3), str(folder / "photo_astronaut.jpg"), show.IMAGE_DELAY),  # sorted
                         ((375, 500, 3), str(folder / "synth_mixed.jpg"), show.IMAGE_DELAY)]
        assert closed == [True]


def test_a_figure_command_shows_its_figure(tmp_path, monkeypatch):
    from dcnviz.viz import show

    shown = []

    class Window:
        def show(self, picture, caption, delay):
            shown.append((picture, caption))

        def close(self):
            pass

    monkeypatch.setattr(show, "open_window", lambda title, warn: Window())
    weights = write_weights("rfcn_dcn_synth", tmp_path / "w.safetensors")
    proc = cli(["offsets", SAMPLES[0], "-m", "rfcn_dcn_synth", "-w", weights, "--at", "100,100", "--show", "-q"],
               tmp_path)
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "runs" / "offsets" / f"{SAMPLES[0].stem}_res5c.png"
    ((picture, caption),) = shown
    assert caption == str(png.relative_to(tmp_path)) and np.array_equal(picture, read_image(png))


@pytest.mark.parametrize("family", ["rcnn", "fpn"])
def test_faster_rcnn_and_fpn_batch_equals_one_at_a_time(family):
    """Faster R-CNN batches its forward like R-FCN (proposals per image); FPN runs its inputs one by one
    (its pyramid proposal layer takes one image) — either way the results are those of predict."""
    import tiny_models

    net = getattr(tiny_models, family)(True).eval()
    rng = np.random.default_rng(0)
    images = [(rng.random((50, 70, 3)) * 255).astype(np.uint8) for _ in range(3)]
    one_by_one = [net.predict(im, score_thresh=0.0) for im in images]
    batched = predict_batch(net, images, score_thresh=0.0)
    for one, many in zip(one_by_one, batched):
        assert len(one) > 0 and np.array_equal(one.labels, many.labels)
        assert np.allclose(one.boxes, many.boxes, atol=1e-4) and np.allclose(one.scores, many.scores, atol=1e-5)
