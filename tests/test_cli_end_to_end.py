"""End to end through the real command line (subprocesses), on the real architectures with random
weights, so no trained file is needed: both bundled architectures from ``.safetensors`` files, and the
official ``rfcn_dcn_coco`` from an official-format ``.params`` file converted by ``dcnviz convert``.

The bundled runs are compared with the library's own prediction in this process (one thread on both
sides, so the numbers are the same to the bit), also when ``--weights`` is an official-format file
converted in memory; the official run, a ResNet-101 at 600 px, is checked
for its files, schema and COCO output only.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cli_helpers import ROOT, assert_one_line_error, coco_ground_truth, leftover_temp_files, run_cli, validate_jsonl
from dcnviz.models.postprocess import filter_detections
from dcnviz.io.images import read_image
from dcnviz.io.results_json import COCO_CATEGORY_IDS, detection_record, segmentation_record
from dcnviz.models import load_model
from random_weights import write_random_params, write_random_safetensors
from torch_threads import threads

SAMPLES = ROOT / "samples"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def bundled_weights(tmp_path_factory):
    """The same random weights of each bundled architecture as .safetensors and in the official format."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name in ("rfcn_dcn_synth", "deeplab_dcn_synth"):
        files[name, "safetensors"] = write_random_safetensors(name, folder / f"{name}.safetensors", seed=1)
        files[name, "params"] = write_random_params(name, folder / f"{name}.params", seed=1)
    return files


@pytest.mark.parametrize("fmt", ["safetensors", "params"])
def test_detect_with_the_bundled_architecture(tmp_path, bundled_weights, fmt, monkeypatch):
    weights = bundled_weights["rfcn_dcn_synth", fmt]
    images = [SAMPLES / "synth_mixed.jpg", SAMPLES / "photo_chelsea.jpg"]
    proc = run_cli(["detect", *images, "--model", "rfcn_dcn_synth", "--weights", weights, "--device", "cpu",
                    "--conf", "0", "--json", "--save-coco", "--out", "out"], cwd=tmp_path, fake=False, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    records = validate_jsonl(proc.stdout, "detections")
    assert [r["image"] for r in records] == sorted(map(str, images))  # inputs are processed in name order
    # loaded the way the CLI loads it: random weights score every RoI near 1/6, so the detections kept
    # hang on last-bit differences that a different tensor layout of the same values can cause
    model = load_model("rfcn_dcn_synth", weights=weights)
    monkeypatch.chdir(tmp_path)  # JSON paths are relative to the working directory of the run
    with threads(1):
        for path, record in zip(sorted(images), records, strict=True):
            dets = filter_detections(model.predict(read_image(path)), conf=0, max_det=100)
            assert record == detection_record(dets, image=path, image_id=record["image_id"], model="rfcn_dcn_synth",
                                              vis=f"out/vis/{path.stem}.jpg")
            assert record["detections"], "random weights still give detections at --conf 0"
            assert json.loads((tmp_path / "out" / "preds" / f"{path.stem}.json").read_text()) == record
            assert Image.open(tmp_path / record["vis"]).size == (record["width"], record["height"])
    results = coco_ground_truth(records, categories=range(1, 6)).loadRes(str(tmp_path / "out" / "preds.coco.json"))
    assert len(results.getAnnIds()) == sum(len(r["detections"]) for r in records)
    log = proc.stderr.splitlines()
    assert log[0] == "rfcn_dcn_synth on cpu: 2 images"
    # the photo is not one of the synthetic scenes the model knows: one warning, before its line
    assert log[1].startswith("Warning: rfcn_dcn_synth was trained on dcnviz's synthetic scenes only")
    assert log[2].startswith(f"1/2 {images[1]}: 500x333, {len(records[0]['detections'])} detections (")
    assert log[-2].startswith("Speed: ") and log[-1] == "Results saved to out"
    assert leftover_temp_files(tmp_path) == []


def test_segment_with_the_bundled_architecture(tmp_path, bundled_weights, monkeypatch):
    weights = bundled_weights["deeplab_dcn_synth", "safetensors"]
    image = SAMPLES / "synth_rings.jpg"
    proc = run_cli(["segment", image, "--model", "deeplab_dcn_synth", "--weights", weights, "--device", "cpu",
                    "--json"], cwd=tmp_path, fake=False, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    (record,) = validate_jsonl(proc.stdout, "segmentation")
    with threads(1):
        seg = load_model("deeplab_dcn_synth", weights=weights).predict(read_image(image))
    monkeypatch.chdir(tmp_path)  # JSON paths are relative to the working directory of the run
    assert record == segmentation_record(seg, image=image, model="deeplab_dcn_synth",
                                         vis="runs/segment/vis/synth_rings.jpg",
                                         mask="runs/segment/masks/synth_rings.png")
    mask = Image.open(tmp_path / record["mask"])
    assert mask.mode == "P"
    np.testing.assert_array_equal(np.asarray(mask), seg.labels)
    assert Image.open(tmp_path / record["vis"]).size == (500, 375)


@pytest.fixture(scope="module")
def official_params(tmp_path_factory):
    """Random weights of the official Deformable R-FCN (ResNet-101, COCO) as the release's file (250 MB)."""
    return write_random_params("rfcn_dcn_coco", tmp_path_factory.mktemp("official") / "rfcn_dcn_coco-0000.params",
                               seed=2)


def test_official_model_converted_then_detect(tmp_path, official_params):
    home = tmp_path / "home"
    env = {"DCNVIZ_HOME": str(home)}
    proc = run_cli(["convert", official_params], cwd=tmp_path, fake=False, env=env)
    assert proc.returncode == 0, proc.stderr
    converted = home / "rfcn_dcn_coco.safetensors"
    assert proc.stdout.splitlines()[0] == "model      rfcn_dcn_coco"  # recognised from its keys
    assert f"wrote      {converted} (" in proc.stdout
    # The model scales every image to 600 px (short side), so a small square input is the cheapest.
    Image.open(SAMPLES / "photo_coffee.jpg").crop((100, 0, 400, 300)).resize((64, 64)).save(tmp_path / "cup.png")
    proc = run_cli(["detect", "cup.png", "--model", "rfcn_dcn_coco", "--weights", converted, "--device", "cpu",
                    "--conf", "0", "--json", "--save-coco"], cwd=tmp_path, fake=False, env=env)
    assert proc.returncode == 0, proc.stderr
    (record,) = validate_jsonl(proc.stdout, "detections")
    assert (record["width"], record["height"], record["model"]) == (64, 64, "rfcn_dcn_coco")
    assert 0 < len(record["detections"]) <= 100
    # boxes are clipped to the 600x600 network input, then mapped back (official): at most 599 / (600 / 64)
    limit = 599 / (600 / 64)
    outside = [d["box"] for d in record["detections"]
               if not (0 <= d["box"][0] <= d["box"][2] <= limit and 0 <= d["box"][1] <= d["box"][3] <= limit)]
    assert outside == []
    results = coco_ground_truth([record], COCO_CATEGORY_IDS).loadRes(str(tmp_path / "runs/detect/preds.coco.json"))
    anns = results.loadAnns(results.getAnnIds())
    assert len(anns) == len(record["detections"])
    assert [a["category_id"] for a in anns] == [COCO_CATEGORY_IDS[d["class_id"] - 1] for d in record["detections"]]
    assert Image.open(tmp_path / record["vis"]).size == (64, 64)


def test_official_weights_of_another_model(tmp_path, official_params):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    proc = run_cli(["detect", "a.png", "--model", "deform_conv", "--weights", official_params, "--device", "cpu"],
                   cwd=tmp_path, fake=False)
    assert_one_line_error(proc, 1, f"{official_params} does not fit model deform_conv: ",
                          "(it looks like a rfcn_dcn_coco file)")
    assert not (tmp_path / "runs" / "detect").exists()
