"""Read and write datasets in the PASCAL VOC layout (real ``VOCdevkit/VOC2007`` and ``dcnviz synth``).

Layout under ``root`` (the ``VOC<year>`` folder itself)::

    Annotations/<id>.xml           ImageSets/Main/<split>.txt           JPEGImages/<id>.jpg
    SegmentationClass/<id>.png     ImageSets/Segmentation/<split>.txt   SegmentationObject/<id>.png

Box convention. The XML holds 1-based inclusive pixel indices (xmin = 1 is the first column). Like the
official MSRA loader (``lib/dataset/pascal_voc.py``) this module subtracts 1 from all four coordinates,
so :class:`VOCObject` boxes are ``(x1, y1, x2, y2)`` 0-based and inclusive: width = x2 - x1 + 1, which is
the convention of :mod:`dcnviz.structures`. Detectron2 instead subtracts 1 only from xmin/ymin (a
half-open box); the two differ by one pixel on the right/bottom edge. Coordinates are kept as floats
(a few VOC2012 files hold fractional ones). Class names are lower-cased and stripped as in MSRA.

Every problem with a file raises :class:`dcnviz.errors.DatasetError` naming the file.
"""
from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dcnviz.errors import DatasetError
from dcnviz.io.atomic import write_bytes_atomic
from dcnviz.io.images import MAX_PIXELS

TASK_DIRS = {"main": "Main", "segmentation": "Segmentation"}


@dataclass(frozen=True)
class VOCObject:
    """One annotated object. ``box`` is ``(x1, y1, x2, y2)``, 0-based inclusive image pixels."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = False
    occluded: bool = False
    pose: str = "Unspecified"


@dataclass(frozen=True)
class Annotation:
    """The contents of one ``Annotations/<id>.xml``: image size in pixels and its objects in file order."""

    image_id: str
    width: int
    height: int
    depth: int
    objects: tuple[VOCObject, ...]
    segmented: bool = False

    def boxes(self) -> np.ndarray:
        """(N, 4) float32 boxes, 0-based inclusive ``x1, y1, x2, y2``."""
        return np.array([o.box for o in self.objects], np.float32).reshape(-1, 4)

    def difficult(self) -> np.ndarray:
        """(N,) bool difficult flags."""
        return np.array([o.difficult for o in self.objects], bool)


class VOCDataset:
    """A VOC-layout folder: split lists, annotations, image and label paths.

    ``root`` is the folder holding ``Annotations`` and ``JPEGImages`` (e.g. ``VOCdevkit/VOC2007`` or the
    output of ``dcnviz synth``).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist")
        if not (self.root / "JPEGImages").is_dir():
            years = sorted(p.name for p in self.root.glob("VOC*") if (p / "JPEGImages").is_dir())
            hint = f" (did you mean {self.root / years[0]}?)" if years else ""
            raise DatasetError(f"{self.root} has no JPEGImages folder{hint}")

    def split_path(self, split: str, task: str = "main") -> Path:
        if task not in TASK_DIRS:
            raise ValueError(f"task must be one of {sorted(TASK_DIRS)}, got {task!r}")
        return self.root / "ImageSets" / TASK_DIRS[task] / f"{split}.txt"

    def ids(self, split: str, task: str = "main") -> list[str]:
        """Image ids listed in ``ImageSets/<Main|Segmentation>/<split>.txt``, in file order."""
        path = self.split_path(split, task)
        if not path.is_file():
            have = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
            raise DatasetError(f"split file {path} does not exist (splits here: {', '.join(have) or 'none'})")
        return read_split(path)

    def image_path(self, image_id: str) -> Path:
        path = self.root / "JPEGImages" / f"{image_id}.jpg"
        if not path.is_file():
            raise DatasetError(f"image {path} does not exist")
        return path

    def annotation(self, image_id: str) -> Annotation:
        return parse_annotation(self.root / "Annotations" / f"{image_id}.xml")

    def segmentation_path(self, image_id: str, kind: str = "class") -> Path:
        """``SegmentationClass/<id>.png`` (kind "class") or ``SegmentationObject/<id>.png`` ("object")."""
        folder = {"class": "SegmentationClass", "object": "SegmentationObject"}[kind]
        return self.root / folder / f"{image_id}.png"

    def segmentation(self, image_id: str, kind: str = "class") -> np.ndarray:
        """(H, W) uint8 label indices; 255 is void."""
        return read_label_png(self.segmentation_path(image_id, kind))


def read_split(path: Path) -> list[str]:
    """Ids of a split file, one per line; per-class files (``<id> <+1|-1|0>``) keep the first column."""
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{path}: <{node.tag}> has no <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path, kind=float):
    text = _text(node, tag, path)
    try:
        return kind(text)
    except ValueError:
        raise DatasetError(f"{path}: <{tag}> is {text!r}, not a number") from None


def _flag(node: ET.Element, tag: str, path: Path) -> bool:
    # A missing flag reads as 0: VOC2007 has no <occluded>; MSRA and D2 would fail on a missing <difficult>.
    return node.find(tag) is not None and bool(_number(node, tag, path, int))


def parse_annotation(path: str | os.PathLike) -> Annotation:
    """Parse one VOC annotation XML; boxes come back 0-based inclusive (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation {path} does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{path}: malformed XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise DatasetError(f"{path}: <annotation> has no <size>")
    width, height = _number(size, "width", path, int), _number(size, "height", path, int)
    depth = _number(size, "depth", path, int) if size.find("depth") is not None else 3
    if width <= 0 or height <= 0:
        raise DatasetError(f"{path}: image size {width}x{height} is empty")
    objects = []
    for node in root.findall("object"):
        bnd = node.find("bndbox")
        if bnd is None:
            raise DatasetError(f"{path}: <object> has no <bndbox>")
        x1, y1, x2, y2 = (_number(bnd, t, path) - 1.0 for t in ("xmin", "ymin", "xmax", "ymax"))
        if x2 < x1 or y2 < y1:
            raise DatasetError(f"{path}: box ({x1 + 1:g}, {y1 + 1:g}, {x2 + 1:g}, {y2 + 1:g}) has max < min")
        if x1 < 0 or y1 < 0 or x2 > width - 1 or y2 > height - 1:
            raise DatasetError(f"{path}: box ({x1 + 1:g}, {y1 + 1:g}, {x2 + 1:g}, {y2 + 1:g}) (1-based) lies "
                               f"outside the {width}x{height} image")
        pose = node.find("pose")
        objects.append(VOCObject(
            name=_text(node, "name", path).lower(), box=(x1, y1, x2, y2),
            difficult=_flag(node, "difficult", path), truncated=_flag(node, "truncated", path),
            occluded=_flag(node, "occluded", path),
            pose=pose.text.strip() if pose is not None and pose.text else "Unspecified"))
    segmented = _flag(root, "segmented", path)
    return Annotation(path.stem, width, height, depth, tuple(objects), segmented)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 label indices of a palette-mode (VOC) or grayscale (SBD "aug") PNG, read without
    any colour conversion. The size limit is the image reader's (:data:`dcnviz.io.images.MAX_PIXELS`),
    checked before decoding; every problem is a :class:`DatasetError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label image {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is the limit
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise DatasetError(f"{path}: label image is {w}x{h}, over the limit of "
                                       f"{MAX_PIXELS // 10**6} MP (decompression bomb?)")
                if im.mode not in ("P", "L"):
                    raise DatasetError(f"{path}: label PNG has mode {im.mode}; expected palette (P) or grayscale (L)")
                return np.array(im, dtype=np.uint8)
    except DatasetError:
        raise
    except Image.DecompressionBombError:
        raise DatasetError(f"{path}: label image is over the limit of {MAX_PIXELS // 10**6} MP "
                           "(decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read label image ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None


# ---------------------------------------------------------------------------------------------- writing
def _coord(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def annotation_xml(ann: Annotation, folder: str = "VOC", database: str = "") -> bytes:
    """The VOC XML of ``ann`` (boxes written back 1-based), as UTF-8 bytes with a trailing newline."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{ann.image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = database
    size = ET.SubElement(root, "size")
    for tag, value in (("width", ann.width), ("height", ann.height), ("depth", ann.depth)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = str(int(ann.segmented))
    for obj in ann.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "pose").text = obj.pose
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "occluded").text = str(int(obj.occluded))
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        bnd = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(bnd, tag).text = _coord(value + 1)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def write_split(path: str | os.PathLike, ids) -> None:
    """Write a split file, one id a line, atomically (a failure leaves no partial file)."""
    write_bytes_atomic(path, "".join(f"{i}\n" for i in ids).encode())
