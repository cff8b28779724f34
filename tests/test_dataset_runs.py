"""Dataset-scale runs (dcnviz.runner): two torchrun processes give what one gives, a SIGKILLed run resumes to
the same files, the merge of per-image statistics is exact, and the COCO and Cityscapes layouts give what
the same images in the VOC layout give.

The bundled synth models run on a few synthetic scenes; every run uses one thread per process
(OMP_NUM_THREADS=1, as torchrun sets it), because the model's float32 sums depend on the thread count."""
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli_helpers import ROOT, assert_one_line_error
from dcnviz.analysis import DilationStats
from dcnviz.data.classes import voc_palette
from dcnviz.data.datasets import CITYSCAPES_TRAIN_IDS, open_split
from dcnviz.data.synth import generate
from dcnviz.data.voc import VOCDataset
from dcnviz.errors import UserError
from dcnviz.io.images import write_png_palette_atomic
from dcnviz.runner import Dist
from dcnviz.runner.distributed import shard
from dcnviz.runner.partial import PartialState
from dcnviz.runner.progress import Progress

ENV = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
IMAGES = 6


def dcnviz(args, cwd, processes: int = 1, **kwargs):
    """``dcnviz ARGS --device cpu`` as a subprocess, under ``torchrun --nproc-per-node processes`` if > 1."""
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    cmd = [sys.executable, *launch, "-m", "dcnviz", *map(str, args), "--device", "cpu"]
    # torchrun leaves a torchelastic_* folder of logs in the temporary folder: the test's own, not /tmp
    own_tmp = {"TMPDIR": str(cwd)} if processes > 1 else {}
    return subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **ENV, **own_tmp}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def completed(proc) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def finished(proc, code: int = 0):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    return out, err


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, IMAGES, seed=11, split="test")
    return root


@pytest.fixture(scope="module")
def single(synth, tmp_path_factory):
    """stats.json of one process, no workers: the reference."""
    out = tmp_path_factory.mktemp("single") / "out"
    finished(dcnviz(["dilation-stats", "--data", synth, "-o", out, "--workers", "0"], synth.parent))
    return out


def assert_same_stats(a: dict, b: dict):
    assert list(a) == list(b)
    for layer in a:
        for bucket, cell in a[layer].items():
            other = b[layer][bucket]
            assert cell["n"] == other["n"] > 0
            for key in ("mean", "std"):
                assert other[key] == pytest.approx(cell[key], rel=1e-9, abs=0)


class TestTorchrun:
    def test_dilation_stats_over_two_processes(self, synth, single, tmp_path):
        out, err = finished(dcnviz(["dilation-stats", "--data", synth, "-o", tmp_path / "out", "--workers", "1"], tmp_path, 2))
        two = json.loads((tmp_path / "out" / "stats.json").read_text())
        one = json.loads((single / "stats.json").read_text())
        assert_same_stats(one["layers"], two["layers"])
        assert two["config"]["images"] == one["config"]["images"] == IMAGES
        assert out.count("Effective dilation") == 1 and err.count("Results saved") == 1  # rank 0 reports
        assert "x 2 processes" in err
        for layer in one["layers"]:  # the histograms are summed counts
            assert (tmp_path / "out" / f"hist_{layer}.png").is_file()
        assert not (tmp_path / "out" / "partial").exists()

    @pytest.mark.parametrize("model", ["rfcn_dcn_synth", "deeplab_dcn_synth"])
    def test_eval_over_two_processes(self, synth, tmp_path, model):
        args = ["eval", "-m", model, "--data", synth, "--json"]
        one = json.loads(finished(dcnviz(args + ["--workers", "0"], tmp_path))[0])
        two = json.loads(finished(dcnviz(args + ["--workers", "1"], tmp_path, 2))[0])
        assert one == two and one["images"] == IMAGES and one["skipped"] == []
        assert (one["mean"]["mAP50"] if "mAP50" in one["mean"] else one["mean"]["mIoU"]) > 0


class TestResume:
    def test_sigkill_then_resume_gives_the_same_files(self, synth, single, tmp_path):
        out = tmp_path / "out"
        cwd = synth.parent  # as the reference run: stats.json records the dataset relative to the working directory
        proc = dcnviz(["dilation-stats", "--data", synth, "-o", out, "--workers", "0", "--save-every", "1"], cwd)
        deadline = time.monotonic() + 300
        while len(list((out / "partial").glob("part-*.json"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert not (out / "stats.json").exists(), "finished before the kill: nothing was resumed"
        done = len(list((out / "partial").glob("part-*.json")))
        assert 2 <= done < IMAGES

        for args, fragment in ((["--limit", "3"], "limit"), (["-m", "deeplab_dcn_synth"], "model")):
            proc = completed(dcnviz(["dilation-stats", "--data", synth, "-o", out, "--resume", *args], cwd))
            assert_one_line_error(proc, 1, f"cannot resume {out}: it was started with {fragment}")

        _, err = finished(dcnviz(["dilation-stats", "--data", synth, "-o", out, "--resume", "--workers", "1"], cwd))
        assert f"{IMAGES - done} images in" in err  # only the rest was run
        for name in ("stats.json", "stats.csv"):
            assert (out / name).read_bytes() == (single / name).read_bytes(), name
        assert not (out / "partial").exists()
        proc = completed(dcnviz(["dilation-stats", "--data", synth, "-o", out, "--resume"], cwd))
        assert_one_line_error(proc, 1, "nothing to resume", "a finished run leaves none")

    def test_an_unfinished_run_is_not_overwritten(self, tmp_path):
        state = PartialState(tmp_path, {"command": "x"})
        state.start(resume=False)
        with pytest.raises(Exception, match="holds an interrupted run.*--resume"):
            PartialState(tmp_path, {"command": "x"}).start(resume=False)
        state.write(0, 0, {3: {"a": 0.1}}, {4: "bad"}, {"t": np.arange(3)})
        resumed = PartialState(tmp_path, {"command": "x"})
        assert resumed.start(resume=True) == [{"records": {"3": {"a": 0.1}}, "errors": {"4": "bad"},
                                                "totals": {"t": [0, 1, 2]}}]
        assert resumed.attempt == 2  # its chunks are numbered apart from the first attempt's


class _SquareJob:
    """A Job whose images are numbers: it loads index**2 (and the loading process's id) and keeps both."""

    def name(self, index: int) -> str:
        return str(index)

    def load(self, index: int) -> dict:
        if index == 3:
            raise UserError("image 3 is bad")
        return {"value": index * index, "pid": os.getpid()}

    def step(self, item: dict):
        return {"value": item["value"], "pid": item["pid"]}, {"n": np.array([1])}


class TestWorkers:
    def test_workers_start_before_the_first_collective(self, monkeypatch):
        """run() forks its DataLoader workers before on_main's broadcast, not just after it (see the
        comment in run: a fork while a gloo thread creates a Python thread state hangs the child on
        CPython < 3.12), and they then load the images chosen after it."""
        from dcnviz.runner import loop

        children_then = []
        real = loop.distributed.on_main

        def on_main(fn, ctx):
            children_then.append(len(multiprocessing.active_children()))
            return real(fn, ctx)

        monkeypatch.setattr(loop.distributed, "on_main", on_main)
        before = len(multiprocessing.active_children())
        outcome = loop.run(_SquareJob(), 6, Dist(), workers=2, quiet=True)
        assert children_then == [before + 2]
        assert {i: r["value"] for i, r in outcome.records.items()} == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}
        assert outcome.errors == {3: "image 3 is bad"} and outcome.totals["n"].tolist() == [5]
        assert os.getpid() not in {r["pid"] for r in outcome.records.values()}  # loaded in the workers


class TestMerge:
    def test_per_image_merge_is_the_stream_bit_for_bit(self):
        rng = np.random.default_rng(0)
        stream, merged = DilationStats(), DilationStats()
        for _ in range(7):
            maps = {"res5c": rng.gamma(2.0, 1.5, (4, 9, 12)), "res5b": rng.gamma(2.0, 1.0, (4, 9, 12))}
            corner = rng.uniform(0, 150, (3, 2))
            boxes = np.hstack([corner, corner + [40, 60]])
            prep = type("Prep", (), {"scale": 1.0})
            stream.add_image(maps, prep, boxes, np.array([False, True, False]), stride=16)
            one = DilationStats()
            one.add_image(maps, prep, boxes, np.array([False, True, False]), stride=16)
            merged.merge(DilationStats.from_state(json.loads(json.dumps(one.state()))))
        assert merged.state() == stream.state()

    def test_shards_cover_every_image_once(self):
        indices = list(range(3, 20))
        parts = [shard(indices, Dist(r, 4)) for r in range(4)]
        assert sorted(sum(parts, [])) == indices and [len(p) for p in parts] == [5, 4, 4, 4]

    def test_progress_lines_without_a_terminal(self, tmp_path):
        with open(tmp_path / "log", "w") as stream:
            progress = Progress(10, initial=4, desc="eval", interval=0.0, stream=stream)
            progress.update(7)
            progress.update(10)
        lines = (tmp_path / "log").read_text().splitlines()
        assert lines[0].startswith("eval: 7/10 images, ") and "img/s, ETA " in lines[0]
        assert lines[1].startswith("eval: 10/10 images") and "ETA" not in lines[1]


# ------------------------------------------------------------------------------------------ layouts
def coco_copy(voc_root: Path, root: Path, split: str = "val2017") -> Path:
    """The VOC-layout synth split as a COCO folder: same JPEG files, instances_<split>.json."""
    voc = VOCDataset(voc_root)
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    names = ["__background__", "worm", "star", "ring", "blob", "cross"]
    images, annotations = [], []
    for k, image_id in enumerate(voc.ids("test")):
        shutil.copy(voc.image_path(image_id), root / split / f"{image_id}.jpg")
        ann = voc.annotation(image_id)
        images.append({"id": 100 + k, "file_name": f"{image_id}.jpg", "width": ann.width, "height": ann.height})
        for o in ann.objects:
            x1, y1, x2, y2 = o.box
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + k, "category_id": 10 + names.index(o.name),
                                "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1], "area": 1.0, "iscrowd": 0})
    images.reverse()  # the reader orders them by id
    categories = [{"id": 10 + i, "name": n} for i, n in enumerate(names) if i]
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def cityscapes_copy(voc_root: Path, root: Path, split: str = "val") -> Path:
    """The synth split as a Cityscapes folder: PNG images (the JPEGs' pixels), labelIds whose train ids are the
    synth classes."""
    voc = VOCDataset(voc_root)
    to_label = np.full(256, 0, np.uint8)  # 255 (void) -> label id 0 ("unlabeled", ignored)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        to_label[train_id] = label_id
    for k, image_id in enumerate(voc.ids("test", "segmentation")):
        city = "aachen" if k % 2 else "bonn"
        name = f"{city}_{k:06d}_000019"
        for folder in ("leftImg8bit", "gtFine"):
            (root / folder / split / city).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"),
                    cv2.imread(str(voc.image_path(image_id))))
        cv2.imwrite(str(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png"),
                    to_label[voc.segmentation(image_id)])
    return root


class TestLayouts:
    def test_coco_boxes_and_crowd(self, synth, tmp_path):
        root = coco_copy(synth, tmp_path / "coco")
        split, voc = open_split(root, "val2017", "detection"), VOCDataset(synth)
        assert split.layout == "COCO" and split.ids == voc.ids("test")
        for image_id in split.ids:
            a, b = split.annotation(image_id), voc.annotation(image_id)
            assert (a.width, a.height, [o.name for o in a.objects]) == (b.width, b.height, [o.name for o in b.objects])
            np.testing.assert_array_equal(a.boxes(), b.boxes())
            np.testing.assert_array_equal(a.difficult(), b.difficult())
        data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
        data["annotations"][0].update(iscrowd=1, bbox=[-3.0, 2.0, 10.0, 0.5])  # clipped, inclusive, crowd
        (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
        first = open_split(root, "val2017", "detection").annotation(split.ids[0]).objects[0]
        assert first.box == (0.0, 2.0, 9.0, 2.0) and first.difficult  # MSRA: x2 = clipped x1 + w - 1
        with pytest.raises(Exception, match="instances_train2017.json does not exist.*instances_val2017.json"):
            open_split(root, "train2017", "detection")

    def test_cityscapes_train_ids(self, synth, tmp_path):
        root = cityscapes_copy(synth, tmp_path / "cityscapes")
        split, voc = open_split(root, "val", "segmentation"), VOCDataset(synth)
        assert split.layout == "Cityscapes" and len(split.ids) == IMAGES and split.ids[0].startswith("aachen/")
        by_name = {f"{'aachen' if k % 2 else 'bonn'}/{'aachen' if k % 2 else 'bonn'}_{k:06d}_000019": i
                   for k, i in enumerate(voc.ids("test", "segmentation"))}
        for image_id in split.ids:
            np.testing.assert_array_equal(split.segmentation(image_id), voc.segmentation(by_name[image_id]))
        with pytest.raises(Exception, match="not boxes"):
            open_split(root, "val", "detection")

    def test_voc2012_as_distributed(self, tmp_path):
        root = tmp_path / "VOCdevkit" / "VOC2012"
        for d in ("Annotations", "JPEGImages", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"):
            (root / d).mkdir(parents=True)
        cv2.imwrite(str(root / "JPEGImages" / "2007_000032.jpg"), np.zeros((6, 8, 3), np.uint8))
        (root / "Annotations" / "2007_000032.xml").write_text(
            "<annotation><size><width>8</width><height>6</height><depth>3</depth></size><object><name>aeroplane"
            "</name><truncated>1</truncated><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>8"
            "</xmax><ymax>6</ymax></bndbox></object></annotation>")
        (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
        (root / "ImageSets" / "Main" / "val.txt").write_text("2007_000032\n")
        labels = np.zeros((6, 8), np.uint8)
        labels[2:, 1:] = 1
        labels[0] = 255
        write_png_palette_atomic(root / "SegmentationClass" / "2007_000032.png", labels, voc_palette())
        det, seg = open_split(root, "val", "detection"), open_split(root, "val", "segmentation")
        obj = det.annotation("2007_000032").objects[0]
        assert (obj.box, obj.difficult, obj.truncated) == ((0.0, 1.0, 7.0, 5.0), True, True)
        np.testing.assert_array_equal(seg.segmentation("2007_000032"), labels)

    def test_the_same_scores_in_every_layout(self, synth, tmp_path):
        import dcnviz
        from dcnviz.eval.dilation_stats import dilation_stats
        from dcnviz.eval.evaluate import evaluate

        coco = coco_copy(synth, tmp_path / "coco")
        det = dcnviz.load_model("rfcn_dcn_synth", device="cpu")
        assert evaluate(det, coco, "val2017") == evaluate(det, synth, "test")
        assert (dilation_stats(det, coco, "val2017").stats.state() == dilation_stats(det, synth, "test").stats.state())
        seg = dcnviz.load_model("deeplab_dcn_synth", device="cpu")
        city = evaluate(seg, cityscapes_copy(synth, tmp_path / "cityscapes"), "val")
        assert city == evaluate(seg, synth, "test") and city["images"] == IMAGES
