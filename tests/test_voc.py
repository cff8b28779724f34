"""The VOC reader on a tiny hand-written VOC2007-style fixture, and its errors."""
import cv2
import numpy as np
import pytest
from PIL import Image

from dcnviz.data.classes import voc_palette
from dcnviz.data.voc import (Annotation, VOCDataset, VOCObject, annotation_xml, parse_annotation,
                             read_label_png)
from dcnviz.errors import DatasetError, UserError
from dcnviz.io.images import write_png_palette_atomic
from imagefiles import write_bomb_png

XML = """<annotation>
  <folder>VOC2007</folder><filename>000001.jpg</filename>
  <size><width>8</width><height>6</height><depth>3</depth></size>
  <segmented>1</segmented>
  <object><name> Dog </name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>8</xmax><ymax>6</ymax></bndbox></object>
  <object><name>person</name><pose>Unspecified</pose><truncated>0</truncated><difficult>1</difficult>
    <bndbox><xmin>3.5</xmin><ymin>1</ymin><xmax>4</xmax><ymax>1</ymax></bndbox></object>
  <object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object>
</annotation>
"""


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"):
        (root / d).mkdir(parents=True)
    (root / "Annotations" / "000001.xml").write_text(XML)
    cv2.imwrite(str(root / "JPEGImages" / "000001.jpg"), np.zeros((6, 8, 3), np.uint8))
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n\n")
    (root / "ImageSets" / "Main" / "dog_test.txt").write_text("000001  1\n000002 -1\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("000001\n")
    return root


def test_reads_split_annotation_and_paths(voc):
    ds = VOCDataset(voc)
    assert ds.ids("test") == ["000001", "000002"]
    assert ds.ids("dog_test") == ["000001", "000002"]  # per-class lists keep the id column
    assert ds.ids("val", task="segmentation") == ["000001"]
    assert ds.image_path("000001") == voc / "JPEGImages" / "000001.jpg"
    ann = ds.annotation("000001")
    assert (ann.image_id, ann.width, ann.height, ann.depth, ann.segmented) == ("000001", 8, 6, 3, True)
    dog, person, cat = ann.objects
    # 1-based inclusive in the file, 0-based inclusive here: (1, 2, 8, 6) -> (0, 1, 7, 5), the full width
    assert dog == VOCObject("dog", (0.0, 1.0, 7.0, 5.0), difficult=False, truncated=True, pose="Left")
    assert person.box == (2.5, 0.0, 3.0, 0.0) and person.difficult
    assert cat.difficult is False and cat.pose == "Unspecified"  # VOC2012-style object without the flags
    np.testing.assert_array_equal(ann.difficult(), [False, True, False])
    assert ann.boxes().dtype == np.float32 and ann.boxes().shape == (3, 4)


def test_errors_name_the_file(voc, tmp_path):
    ds = VOCDataset(voc)
    with pytest.raises(DatasetError, match=r"ImageSets/Main/train.txt does not exist \(splits here: test\)"):
        ds.ids("train")
    with pytest.raises(DatasetError, match=r"JPEGImages/000002.jpg does not exist"):
        ds.image_path("000002")
    with pytest.raises(DatasetError, match=r"Annotations/000002.xml does not exist"):
        ds.annotation("000002")
    with pytest.raises(DatasetError, match=r"did you mean .*VOC2007"):
        VOCDataset(voc.parent)
    with pytest.raises(DatasetError, match="does not exist"):
        VOCDataset(tmp_path / "nowhere")
    assert issubclass(DatasetError, UserError) and issubclass(DatasetError, ValueError)


@pytest.mark.parametrize("edit, message", [
    (lambda x: x.replace("</annotation>", ""), "malformed XML"),
    (lambda x: x.replace("<name>cat</name>", ""), "<object> has no <name>"),
    (lambda x: x.replace("<xmax>3</xmax>", ""), "<bndbox> has no <xmax>"),
    (lambda x: x.replace("<xmax>3</xmax>", "<xmax>three</xmax>"), "<xmax> is 'three', not a number"),
    (lambda x: x.replace("<size><width>8</width>", "<size>"), "<size> has no <width>"),
    (lambda x: x.replace("<size><width>8</width><height>6</height><depth>3</depth></size>", ""), "has no <size>"),
    (lambda x: x.replace("<xmax>8</xmax>", "<xmax>9</xmax>"), "outside the 8x6 image"),
    (lambda x: x.replace("<xmin>2</xmin><ymin>2</ymin>", "<xmin>0</xmin><ymin>2</ymin>"), "outside the 8x6 image"),
    (lambda x: x.replace("<xmin>2</xmin><ymin>2</ymin>", "<xmin>4</xmin><ymin>2</ymin>"), "max < min"),
])
def test_bad_annotation(tmp_path, edit, message):
    path = tmp_path / "bad.xml"
    path.write_text(edit(XML))
    with pytest.raises(DatasetError, match=message) as info:
        parse_annotation(path)
    assert str(path) in str(info.value)


def test_label_png_reads_indices_not_colours(tmp_path):
    labels = np.array([[0, 1, 15], [20, 255, 0]], np.uint8)
    path = tmp_path / "p.png"
    write_png_palette_atomic(path, labels, voc_palette())
    with Image.open(path) as im:
        assert im.mode == "P" and im.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_label_png(path), labels)
    Image.fromarray(labels).save(tmp_path / "gray.png")  # SBD "aug"-style grayscale labels
    np.testing.assert_array_equal(read_label_png(tmp_path / "gray.png"), labels)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="rgb.png: label PNG has mode RGB"):
        read_label_png(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="junk.png: cannot read"):
        read_label_png(tmp_path / "junk.png")
    with pytest.raises(DatasetError, match="missing.png does not exist"):
        read_label_png(tmp_path / "missing.png")


@pytest.mark.parametrize("size", [(40000, 40000), (12000, 10000)], ids=["pillow-bomb", "over-max-pixels"])
def test_label_png_bomb_is_a_dataset_error(tmp_path, size):
    """A header claiming 1.6 GP makes Pillow raise DecompressionBombError (not an OSError); 120 MP is under
    Pillow's limit but over the image reader's: both are refused, in one line, before decoding."""
    path = write_bomb_png(tmp_path / "bomb.png", *size)
    with pytest.raises(DatasetError, match="bomb.png: label image is .*over the limit of 100 MP"):
        read_label_png(path)


def test_writer_round_trip(tmp_path):
    ann = Annotation("x1", 8, 6, 3, (VOCObject("ring", (0.0, 1.0, 7.0, 5.0), difficult=True, truncated=True,
                                                occluded=True),
                                      VOCObject("star", (2.0, 2.0, 2.0, 2.0))), segmented=True)
    xml = annotation_xml(ann)
    assert b"<xmin>1</xmin>" in xml and b"<xmax>8</xmax>" in xml  # written back 1-based
    (tmp_path / "x1.xml").write_bytes(xml)
    assert parse_annotation(tmp_path / "x1.xml") == ann
