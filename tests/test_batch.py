"""``detect``/``segment --batch N``: network inputs of the same size run in one forward, others in smaller
batches; the results equal one image at a time (random weights, the bundled architectures, in process)."""
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
    forwards, forward = [], net.forward_official
    net.forward_official = lambda data, *a, **k: forwards.append(len(data)) or forward(data, *a, **k)
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
        proc = cli(["detect", folder, "-w", weights, "--conf", "0.01", "--batch", batch, "--json", "-o",
                    tmp_path / f"b{batch}"], tmp_path)
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
        proc = cli(["segment", folder, "-w", weights, "--batch", batch, "-q", "-o", tmp_path / f"b{batch}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
    for mask in sorted((tmp_path / "b1" / "masks").iterdir()):
        assert np.array_equal(read_image(mask), read_image(tmp_path / "b4" / "masks" / mask.name))
