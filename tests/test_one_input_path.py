"""One image reader and one preprocessing for every path (issue 17, defect 2): a photo with EXIF
orientation 1-8 gives the same detections through ``dcnviz detect``, ``model.predict(path)`` and
``evaluate`` (which is what ``dcnviz eval`` runs); training reads it the same way."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dcnviz
from cli_helpers import run_cli, validate_jsonl
from dcnviz.data.loader import VOCDetSeg
from dcnviz.data.voc import Annotation, VOCObject, annotation_xml
from dcnviz.eval.evaluate import evaluate
from dcnviz.models.preprocess import preprocess

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "synth_mixed.jpg"
# The transpose that stores an upright picture so that a viewer applying EXIF orientation o shows it
# upright again (the inverse of what ImageOps.exif_transpose does for o).
STORE = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
         7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


@pytest.fixture(scope="module")
def exif_voc(tmp_path_factory) -> Path:
    """A VOC-layout folder of the sample stored in each of the 8 EXIF orientations (one box each)."""
    root = tmp_path_factory.mktemp("exif") / "VOC"
    upright = Image.open(SAMPLE).convert("RGB")
    w, h = upright.size
    ids = [f"o{o}" for o in STORE]
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for o, image_id in zip(STORE, ids):
        stored = upright if STORE[o] is None else upright.transpose(STORE[o])
        exif = Image.Exif()
        exif[0x0112] = o
        stored.save(root / "JPEGImages" / f"{image_id}.jpg", quality=95, exif=exif.tobytes())
        ann = Annotation(image_id, w, h, 3, (VOCObject("ring", (10.0, 10.0, 100.0, 100.0)),))
        (root / "Annotations" / f"{image_id}.xml").write_bytes(annotation_xml(ann))
    (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


class _Recorder:
    """The model as ``evaluate`` sees it, remembering what ``predict`` returned per path."""

    def __init__(self, model):
        self.model, self.classes, self.task, self.seen = model, model.classes, model.task, {}

    def predict(self, image):
        self.seen[Path(image).stem] = dets = self.model.predict(image)
        return dets


def test_exif_orientations_give_the_same_detections_everywhere(exif_voc, tmp_path):
    images = sorted((exif_voc / "JPEGImages").iterdir())
    proc = run_cli(["detect", exif_voc / "JPEGImages", "--model", "rfcn_dcn_synth", "--conf", "0", "--json",
                    "-d", "cpu", "--out", tmp_path / "out", "-q"], cwd=tmp_path, fake=False)
    assert proc.returncode == 0, proc.stderr
    cli = {Path(r["image"]).stem: r for r in validate_jsonl(proc.stdout, "detections")}
    model = dcnviz.load_model("rfcn_dcn_synth")
    recorder = _Recorder(model)
    evaluate(recorder, exif_voc, "test")
    upright_h, upright_w = np.asarray(Image.open(SAMPLE)).shape[:2]
    for path in images:
        record, dets, evaluated = cli[path.stem], model.predict(str(path)), recorder.seen[path.stem]
        assert (record["height"], record["width"]) == (upright_h, upright_w) == tuple(dets.prep.image_size)
        assert len(record["detections"]) == len(dets) == len(evaluated) > 0, path.name
        np.testing.assert_allclose([d["box"] for d in record["detections"]], dets.boxes, atol=0.006)
        np.testing.assert_allclose([d["score"] for d in record["detections"]], dets.scores, atol=6e-6)
        assert [d["class_id"] for d in record["detections"]] == list(dets.labels)
        np.testing.assert_array_equal(evaluated.boxes, dets.boxes)
        np.testing.assert_array_equal(evaluated.scores, dets.scores)


def test_training_reads_the_image_as_inference_does(exif_voc):
    """The loader's input tensor is bit-identical to ``model.predict``'s preprocessing (EXIF applied,
    float64 mean subtraction) for every orientation."""
    dataset = VOCDetSeg(exif_voc, "test", short_side=600, max_size=1000)
    for index, image_id in enumerate(dataset.ids):
        image, target = dataset[index]
        data, prep = preprocess(exif_voc / "JPEGImages" / f"{image_id}.jpg", (600, 1000))
        assert target["prep"] == prep
        assert torch.equal(image, data[0]), image_id
