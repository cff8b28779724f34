"""dcnviz synth: determinism, the VOC round trip, label consistency and the spread of object sizes."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dcnviz.cli import main
from dcnviz.data.classes import SYNTH_CLASSES, VOID, voc_palette
from dcnviz.data.synth import generate, render_scene, scene_rng
from dcnviz.data.voc import VOCDataset
from dcnviz.errors import UserError


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate(tmp_path / "a", 3, seed=7, split="train")
    generate(tmp_path / "b", 3, seed=7, split="train")
    generate(tmp_path / "c", 3, seed=8, split="train")
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert len(a) == 3 * 4 + 2 and a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.startswith("JPEGImages"))


def test_splits_append_without_clobbering(tmp_path):
    generate(tmp_path, 2, seed=0, split="train")
    before = _files(tmp_path)
    ids = generate(tmp_path, 2, seed=0, split="val")
    assert ids == ["val_000000", "val_000001"]
    after = _files(tmp_path)
    assert all(after[k] == v for k, v in before.items())
    # same seed, other split: other scenes
    assert after["JPEGImages/val_000000.jpg"] != after["JPEGImages/train_000000.jpg"]
    assert not list(tmp_path.glob(".synth-*"))
    with pytest.raises(UserError, match="split 'train' already exists"):
        generate(tmp_path, 1, seed=3, split="train")
    (tmp_path / "ImageSets" / "Main" / "val.txt").unlink()
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(UserError, match="image id val_000000 already exists"):
        generate(tmp_path, 1, seed=3, split="val")
    assert _files(tmp_path)["JPEGImages/val_000000.jpg"] == after["JPEGImages/val_000000.jpg"]
    for bad in (dict(images=0), dict(seed=-1), dict(split="a/b")):
        with pytest.raises(UserError):
            generate(tmp_path, **{"images": 1, "seed": 0, "split": "x", **bad})


def test_round_trip_through_the_reader(tmp_path):
    generate(tmp_path, 2, seed=11, split="val")
    ds = VOCDataset(tmp_path)
    assert ds.ids("val") == ds.ids("val", task="segmentation") == ["val_000000", "val_000001"]
    for index, image_id in enumerate(ds.ids("val")):
        scene = render_scene(scene_rng(11, "val", index), image_id)
        assert ds.annotation(image_id) == scene.annotation
        xml = (tmp_path / "Annotations" / f"{image_id}.xml").read_text()
        x1, y1, x2, y2 = scene.annotation.objects[0].box
        assert f"<xmin>{int(x1) + 1}</xmin>" in xml and f"<ymax>{int(y2) + 1}</ymax>" in xml  # 1-based on disk
        np.testing.assert_array_equal(ds.segmentation(image_id), scene.labels)
        np.testing.assert_array_equal(ds.segmentation(image_id, "object"), scene.instances)
        with Image.open(ds.segmentation_path(image_id)) as im:
            assert im.mode == "P" and im.getpalette()[:6 * 3] == [c for rgb in voc_palette(6) for c in rgb]
        image = cv2.imread(str(ds.image_path(image_id)))
        assert image.shape == (scene.annotation.height, scene.annotation.width, 3)
        assert np.abs(image.astype(int) - scene.image).mean() < 8  # JPEG quality 90 of the same pixels


def test_labels_agree_with_boxes():
    scene = render_scene(scene_rng(0, "check", 3), "x")
    names = [o.name for o in scene.annotation.objects]
    assert len(names) >= 2
    for k, obj in enumerate(scene.annotation.objects, start=1):
        ys, xs = np.nonzero(scene.instances == k)
        x1, y1, x2, y2 = (int(v) for v in obj.box)
        assert x1 <= xs.min() and xs.max() <= x2 and y1 <= ys.min() and ys.max() <= y2
        # tight: each edge of the box touches the object or the void band over it
        inside = scene.instances[y1:y2 + 1, x1:x2 + 1]
        edge = (inside == k) | (inside == VOID)
        assert edge[0].any() and edge[-1].any() and edge[:, 0].any() and edge[:, -1].any()
        assert np.all(scene.labels[ys, xs] == SYNTH_CLASSES.index(obj.name))
    assert np.array_equal(scene.labels == VOID, scene.instances == VOID)
    assert VOID in scene.labels and set(np.unique(scene.labels)) <= set(range(len(SYNTH_CLASSES))) | {VOID}


def test_sizes_cover_the_table2_buckets():
    """Box areas over 40 scenes: every bucket of paper Table 2 (small < 96², large > 224²) is populated,
    from near 16 px to most of the image; every class occurs and a few objects are difficult."""
    areas, names, difficult = [], set(), 0
    for index in range(40):
        ann = render_scene(scene_rng(0, "sizes", index), "x").annotation
        for obj in ann.objects:
            x1, y1, x2, y2 = obj.box
            areas.append((x2 - x1 + 1) * (y2 - y1 + 1))
            names.add(obj.name)
            difficult += obj.difficult
        assert (ann.width, ann.height) in ((500, 375), (375, 500))
    areas = np.sqrt(areas)
    small, large = (areas < 96).sum(), (areas > 224).sum()
    assert small >= 60 and len(areas) - small - large >= 30 and large >= 15
    assert areas.min() < 20 and areas.max() > 330
    assert names == set(SYNTH_CLASSES[1:])
    assert 0 < difficult < 0.1 * len(areas)


def test_cli(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["synth", "--data", str(tmp_path / "ds"), "--images", "2", "--seed", "1", "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 scenes (val, seed 1)" in result.output
    assert (tmp_path / "ds" / "ImageSets" / "Main" / "val.txt").read_text() == "val_000000\nval_000001\n"
    again = runner.invoke(main, ["synth", "--data", str(tmp_path / "ds"), "--images", "1", "--split", "val"])
    assert again.exit_code == 1 and "Traceback" not in again.output
    assert again.output.strip().splitlines() == [
        f"Error: split 'val' already exists in {tmp_path / 'ds'} (ImageSets/Main/val.txt); "
        "choose another --split or output folder"]
