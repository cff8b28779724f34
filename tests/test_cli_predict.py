"""The shared run loop (dcnviz.cli.predict), JSON/COCO records (dcnviz.io.results_json), device and
model selection (dcnviz.cli.common), and the detect/segment commands in-process with fake models."""
from __future__ import annotations

import dataclasses
import json

import click
import jsonschema
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import dcnviz
import fake_models
from cli_helpers import coco_ground_truth, leftover_temp_files, validate_jsonl
from dcnviz.cli import main
from dcnviz.cli import predict as predict_mod
from dcnviz.cli.common import parse_classes, resolve_model, select_device
from dcnviz.cli.predict import RunOptions, run_predictions
from dcnviz.models.postprocess import filter_detections
from dcnviz.errors import DeviceError, UserError
from dcnviz.io.results_json import (COCO_CATEGORY_IDS, class_histogram, coco_category_ids, coco_image_ids,
                                    coco_results, detection_record, load_schema)
from dcnviz.models import registry
from dcnviz.structures import Detections, Prep
from imagefiles import gradient_rgb, save, write_truncated_jpeg

fake_models.register()


@pytest.fixture
def images(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    paths = [save(data / "a.jpg", gradient_rgb(30, 40)), save(data / "b.png", gradient_rgb(20, 24)[..., 1])]
    return paths


def detector(image):
    return fake_models.FakeModel("fake-det").predict(image)


def segmenter(image):
    return fake_models.FakeModel("fake-seg").predict(image)


class TestRunPredictions:
    def test_detection_files_records_and_log(self, tmp_path, images, capsys):
        write_truncated_jpeg(images[0].parent / "c.jpg")
        images = images + [images[0].parent / "c.jpg"]
        out = tmp_path / "out"
        summary = run_predictions("detection", images, detector, out, RunOptions(model="fake-det", json=True))
        assert summary.processed == 2 and len(summary.failed) == 1 and "c.jpg" in summary.failed[0]
        captured = capsys.readouterr()
        records = validate_jsonl(captured.out, "detections")
        assert [r.get("error") is None for r in records] == [True, True, False]
        validator = jsonschema.Draft202012Validator(load_schema("detections"))
        for record in records[:2]:
            name = record["image"].rsplit("/", 1)[1].split(".")[0]
            saved = json.loads((out / "preds" / f"{name}.json").read_text())
            validator.validate(saved)
            assert saved == record
            assert Image.open(record["vis"]).size == (record["width"], record["height"])
        first = records[0]
        assert (first["width"], first["height"]) == (40, 30)
        assert first["detections"][0] == {"box": [0.0, 0.0, 20.0, 15.0], "score": 0.9, "class_id": 1,
                                          "class_name": "cat"}
        lines = captured.err.splitlines()
        assert lines[0].startswith(f"1/3 {images[0]}: 40x30, 3 detections (1 cat, 1 dog, 1 person), ")
        assert lines[0].endswith(" ms")
        assert lines[2].startswith("Error: cannot read image") and lines[2].endswith("; skipped")
        assert lines[3].startswith("Speed: ") and lines[4] == f"Results saved to {out}"
        assert lines[5] == "Error: 1 of 3 images could not be read and were skipped"
        assert leftover_temp_files(tmp_path) == []

    def test_segmentation_mask_overlay_and_histogram(self, tmp_path, images, capsys):
        out = tmp_path / "out"
        run_predictions("segmentation", images, segmenter, out, RunOptions(model="fake-seg", json=True))
        records = validate_jsonl(capsys.readouterr().out, "segmentation")
        for path, record in zip(images, records):
            expected = segmenter(np.zeros((record["height"], record["width"], 3), np.uint8))
            mask = Image.open(record["mask"])
            assert mask.mode == "P" and mask.getpalette()[:9] == [c for rgb in fake_models.SEG_PALETTE for c in rgb]
            np.testing.assert_array_equal(np.asarray(mask), expected.labels)
            assert sum(c["pixels"] for c in record["classes"]) == record["width"] * record["height"]
            assert [c["class_name"] for c in record["classes"]] == ["road", "car", "sky"]
            assert record["vis"].endswith(".jpg" if path.suffix == ".jpg" else ".png")

    def test_save_coco_loads_with_pycocotools(self, tmp_path, images, capsys):
        out = tmp_path / "out"
        opts = RunOptions(model="fake-det", json=True, save_coco=True)
        run_predictions("detection", images, detector, out, opts)
        records = validate_jsonl(capsys.readouterr().out, "detections")
        gt = coco_ground_truth(records, categories=[1, 2, 3])
        results = gt.loadRes(str(out / predict_mod.COCO_FILE))
        assert len(results.getAnnIds()) == sum(len(r["detections"]) for r in records) == 6
        for record in records:
            anns = results.loadAnns(results.getAnnIds(imgIds=[record["image_id"]]))
            x1, y1, x2, y2 = record["detections"][0]["box"]
            assert anns[0]["bbox"] == [x1, y1, x2 - x1 + 1, y2 - y1 + 1]

    def test_coco_model_uses_coco_category_ids(self, tmp_path, images):
        spec = registry.get_spec("fake-det-coco")
        ids = coco_category_ids(spec.classes, spec.dataset)
        opts = RunOptions(model=spec.name, category_ids=ids, save_coco=True, quiet=True)
        predictor = fake_models.FakeModel("fake-det-coco").predict
        run_predictions("detection", images, predictor, tmp_path / "out", opts)
        results = json.loads((tmp_path / "out" / predict_mod.COCO_FILE).read_text())
        assert {r["category_id"] for r in results} == {1, 2, 3}  # labels 1..3 -> the first three COCO ids
        assert ids[12] == 13 and ids[80] == 90

    def test_quiet_prints_errors_only(self, tmp_path, images, capsys):
        (images[0].parent / "z.jpg").write_bytes(b"")
        run_predictions("detection", images + [images[0].parent / "z.jpg"], detector, tmp_path / "o",
                        RunOptions(model="fake-det", quiet=True))
        captured = capsys.readouterr()
        assert captured.out == ""
        assert all(line.startswith("Error: ") for line in captured.err.splitlines())
        assert len(captured.err.splitlines()) == 2

    def test_no_detections(self, tmp_path, images, capsys):
        def nothing(image):
            return filter_detections(detector(image), conf=1.0)

        run_predictions("detection", images[:1], nothing, tmp_path / "o", RunOptions(model="m", json=True))
        captured = capsys.readouterr()
        assert validate_jsonl(captured.out, "detections")[0]["detections"] == []
        assert ": 40x30, no detections, " in captured.err

    def test_progress_bar_only_when_wanted(self, tmp_path, images, capsys, monkeypatch):
        monkeypatch.setattr(predict_mod, "MANY_IMAGES", 2)
        run_predictions("detection", images, detector, tmp_path / "o1", RunOptions(model="m"))
        assert "0/2 [" in capsys.readouterr().err  # tqdm's first frame
        run_predictions("detection", images, detector, tmp_path / "o2", RunOptions(model="m", json=True))
        assert "0/2 [" not in capsys.readouterr().err

    def test_wrong_result_type_or_size_is_a_bug(self, tmp_path, images):
        with pytest.raises(TypeError, match="returned Segmentation, not Detections"):
            run_predictions("detection", images, segmenter, tmp_path / "o", RunOptions(model="m"))

        def rotated(image):
            return detector(np.ascontiguousarray(np.swapaxes(image, 0, 1)))

        with pytest.raises(ValueError, match="result for a 30x40 image, but the image is 40x30"):
            run_predictions("detection", images, rotated, tmp_path / "o", RunOptions(model="m"))


class TestFilterAndClasses:
    def test_filter_detections(self):
        dets = fake_models.fake_detections(np.zeros((10, 10, 3), np.uint8))
        assert filter_detections(dets, conf=0.5).labels.tolist() == [1, 2]
        assert filter_detections(dets, classes={2, 3}).scores.tolist() == pytest.approx([0.6, 0.3])
        one = filter_detections(dets, max_det=1)
        assert one.labels.tolist() == [1] and one.boxes.shape == (1, 4) and one.prep is dets.prep
        reversed_order = dataclasses.replace(dets, scores=dets.scores[::-1].copy())
        assert filter_detections(reversed_order).scores.tolist() == pytest.approx([0.9, 0.6, 0.3])

    def test_parse_classes(self):
        names = fake_models.DET_CLASSES
        assert parse_classes((), names) is None
        assert parse_classes(("Cat,3", "dog"), names) == {1, 2, 3}
        with pytest.raises(click.BadParameter, match="unknown class 'dgo'; did you mean dog"):
            parse_classes(("dgo",), names)
        with pytest.raises(click.BadParameter, match="unknown class '0'"):
            parse_classes(("0",), names)  # background
        with pytest.raises(click.BadParameter, match="unknown class '9'"):
            parse_classes(("9",), names)


class TestResultsJson:
    def test_coco_box_convention(self):
        dets = Detections(boxes=np.array([[10.0, 20.0, 29.0, 59.0]], np.float32), scores=np.array([0.5], np.float32),
                          labels=np.array([1]), class_names=("bg", "x"), prep=Prep((100, 100), 1.0, (100, 100)))
        assert coco_results(dets, 7) == [{"image_id": 7, "category_id": 1, "bbox": [10.0, 20.0, 20.0, 40.0],
                                          "score": 0.5}]
        assert coco_results(dets, 7, category_ids=(0, 42))[0]["category_id"] == 42
        with pytest.raises(ValueError, match="class id 1 but the model has 1 classes"):
            detection_record(dataclasses.replace(dets, class_names=("bg",)), image="a", image_id=1, model="m", vis=None)

    def test_category_ids(self):
        assert len(COCO_CATEGORY_IDS) == 80 and len(set(COCO_CATEGORY_IDS)) == 80 and max(COCO_CATEGORY_IDS) == 90
        assert coco_category_ids(fake_models.DET_CLASSES, "voc") is None
        assert coco_category_ids(fake_models.COCO_CLASSES, "coco")[1:] == COCO_CATEGORY_IDS

    def test_image_ids(self, tmp_path):
        numeric = [tmp_path / "000000397133.jpg", tmp_path / "42.png"]
        assert coco_image_ids(numeric) == {numeric[0]: 397133, numeric[1]: 42}
        mixed = [tmp_path / "1.jpg", tmp_path / "cat.jpg", tmp_path / "01.jpg"]
        assert coco_image_ids(mixed) == {mixed[0]: 1, mixed[1]: 2, mixed[2]: 3}

    def test_class_histogram(self):
        assert class_histogram(np.array([[0, 2], [2, 2]], np.uint8), 4).tolist() == [1, 0, 3, 0]
        with pytest.raises(ValueError, match="class id 5"):
            class_histogram(np.array([[5]], np.uint8), 3)


class TestSelectDevice:
    def test_cpu_and_auto_without_cuda(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        warnings = []
        assert select_device("cpu", warnings.append) == torch.device("cpu") and warnings == []
        assert select_device("auto", warnings.append) == torch.device("cpu") and len(warnings) == 1

    def test_cuda_missing(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
        with pytest.raises(DeviceError, match=r"--device cuda requested but CUDA is not usable "
                                              r"\(torch.cuda.is_available\(\)=False, device count 0, "
                                              r"CUDA_VISIBLE_DEVICES=7, .*\); use --device cpu"):
            select_device("cuda")

    def test_cuda_index_out_of_range(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        assert select_device("auto") == torch.device("cuda", 0)
        assert select_device("CUDA:1") == torch.device("cuda", 1)
        with pytest.raises(DeviceError, match=r"only 2 CUDA device\(s\) are visible .* cuda:0 … cuda:1"):
            select_device("cuda:2")

    def test_bad_spec(self):
        with pytest.raises(DeviceError, match="unknown device 'gpu'"):
            select_device("gpu")


class TestResolveModel:
    def test_unknown_and_other_task(self):
        with pytest.raises(click.BadParameter, match="did you mean fake-det"):
            resolve_model("fake-dte", "detection")
        with pytest.raises(click.BadParameter, match="'fake-seg' is a segmentation model.*dcnviz segment"):
            resolve_model("fake-seg", "detection")

    def test_default_is_first_bundled_model_of_the_task(self, monkeypatch):
        specs = {n: registry.get_spec(n) for n in ("fake-det", "fake-det-coco", "fake-seg")}
        monkeypatch.setattr(registry, "_REGISTRY", specs)
        assert resolve_model(None, "detection").name == "fake-det"  # fake-det-coco is not bundled
        assert resolve_model(None, "segmentation").name == "fake-seg"
        monkeypatch.setattr(registry, "_REGISTRY", {})
        with pytest.raises(UserError, match="no bundled detection model is installed"):
            resolve_model(None, "detection")


class TestCommands:
    """detect/segment through click in-process, with ``dcnviz.load_model`` replaced by the fake."""

    @pytest.fixture
    def cli(self, tmp_path, images, monkeypatch):
        monkeypatch.setattr(dcnviz, "load_model", fake_models.load_model, raising=False)
        monkeypatch.chdir(tmp_path)

        def invoke(*args):
            return CliRunner().invoke(main, [str(a) for a in args], prog_name="dcnviz")

        return invoke

    def test_detect_json_filters_and_coco(self, cli, tmp_path):
        result = cli("detect", "data", "-m", "fake-det", "-d", "cpu", "--json", "--save-coco",
                     "--conf", "0.2", "--classes", "dog,person", "--max-det", "1")
        assert result.exit_code == 0, result.output
        records = validate_jsonl(result.stdout, "detections")  # stdout holds nothing but JSON lines
        assert [[d["class_name"] for d in r["detections"]] for r in records] == [["dog"], ["dog"]]
        coco = json.loads((tmp_path / "runs" / "detect" / "preds.coco.json").read_text())
        assert [c["category_id"] for c in coco] == [2, 2]
        assert "Results saved to runs/detect" in result.stderr

    def test_segment_json(self, cli, tmp_path):
        result = cli("segment", "data/b.png", "-m", "fake-seg", "-d", "cpu", "--json", "--alpha", "0.3")
        assert result.exit_code == 0, result.output
        (record,) = validate_jsonl(result.stdout, "segmentation")
        assert record["mask"] == "runs/segment/masks/b.png" and (tmp_path / record["mask"]).is_file()

    def test_never_overwrites_and_exist_ok_reuses(self, cli, tmp_path):
        assert cli("detect", "data", "-m", "fake-det", "-d", "cpu", "-q").exit_code == 0
        first = tmp_path / "runs" / "detect" / "preds" / "a.json"
        first.write_text("edited by the user")
        assert cli("detect", "data", "-m", "fake-det", "-d", "cpu", "-q").exit_code == 0
        assert first.read_text() == "edited by the user"
        assert (tmp_path / "runs" / "detect2" / "preds" / "a.json").is_file()
        assert cli("detect", "data", "-m", "fake-det", "-d", "cpu", "-q", "--out", "runs/detect",
                   "--exist-ok").exit_code == 0
        json.loads(first.read_text())
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["detect", "detect2"]

    @pytest.mark.parametrize("args, fragment", [
        (["-m", "fake-seg"], "'fake-seg' is a segmentation model"),
        (["-m", "fake-det", "--weights", "nope.safetensors"], "nope.safetensors"),
        (["-m", "fake-det", "--device", "gpu0"], "expected auto, cpu, cuda or cuda:N"),
        (["-m", "fake-det", "--conf", "1.5"], "--conf"),
        (["-m", "fake-det", "--classes", "horse"], "unknown class 'horse'"),
    ], ids=["other-task", "missing-weights", "device-syntax", "conf-range", "unknown-class"])
    def test_usage_errors_exit_2(self, cli, tmp_path, args, fragment):
        result = cli("detect", "data", *args)
        assert result.exit_code == 2
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in result.output
        assert not (tmp_path / "runs").exists()

    def test_version_without_install_metadata(self):
        result = CliRunner().invoke(main, ["--version"])
        assert result.exit_code == 0 and dcnviz.__version__ in result.output

    def test_group_debug_flag_reraises(self, cli, monkeypatch):
        monkeypatch.setenv("DCNVIZ_FAKE_CRASH", "1")
        result = cli("detect", "data", "-m", "fake-det", "-d", "cpu")
        assert result.exit_code == 1 and "RuntimeError: fake model crashed; with a second line" in result.stderr
        result = cli("--debug", "detect", "data", "-m", "fake-det", "-d", "cpu")
        assert isinstance(result.exception, RuntimeError)
