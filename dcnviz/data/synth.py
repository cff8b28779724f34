"""Synthetic scenes in the PASCAL VOC layout, built for what deformable convolution is for.

Each scene is a VOC-sized image (500x375 or 375x500) holding 1-11 objects of the classes in
:data:`dcnviz.data.classes.SYNTH_CLASSES`, with box sizes from about 16 px to most of the image, sampled
per object from the three buckets of the paper's Table 2 (small < 96², medium, large > 224² px box
area). The class of an object is carried by its outline only: objects are bent, elastically warped,
rotated and stretched (:mod:`dcnviz.data.shapes`), and every object and every straight-edged distractor
shape (not in the class list; some occlude objects) draws its fill from the same patterned textures
(stripes, checks, blotches, dots). The background is muted — flat, gradient or blotchy fills whose
two colours lie at most ``background_contrast`` apart, in a few large straight-edged regions — and
crossed by clutter strokes. So "thing or background" can be seen locally, as in photographs, while
"which thing" needs the whole outline: the geometric variation deformable convolution is for.
(A first version drew the background from the object textures too; the small models could then not
tell objects from background at all: ``weights/README.md``.)

Labels follow VOC: a box is the extent of the object's visible pixels; ``truncated`` when part of it
lies outside the image, ``occluded`` when something covers part of it, ``difficult`` when less than
40 % of it is visible or fewer than 150 pixels are (tiny); ``SegmentationClass`` holds class indices with a
void (255) band one pixel either side of every object boundary (VOC's hand-drawn band is about 5 px);
``SegmentationObject`` holds the 1-based index of the object in the XML.

Determinism: a scene depends only on (seed, split, index) through ``numpy.random.default_rng``, so the
same command gives byte-identical files on the same installation (numpy, OpenCV and Pillow versions).
"""
from __future__ import annotations

import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dcnviz.data import shapes
from dcnviz.data.classes import SYNTH_CLASSES, VOID, voc_palette
from dcnviz.data.voc import Annotation, VOCObject, annotation_xml, write_split
from dcnviz.errors import UserError
from dcnviz.io.atomic import write_bytes_atomic
from dcnviz.io.images import write_png_palette_atomic

BUCKETS = {"small": (16, 90), "medium": (100, 215), "large": (235, 390)}  # sqrt of box area, px


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene distribution. ``counts``: per bucket, the (low, high) inclusive number of
    objects drawn per image; ``elastic``, ``bend``, ``aspect``: see :func:`shapes.deform`."""

    counts: tuple = (("small", 0, 6), ("medium", 0, 3), ("large", 0, 2))
    elastic: float = 0.15
    bend: float = 0.8
    aspect: float = 0.7
    regions: tuple[int, int] = (0, 3)
    clutter: tuple[int, int] = (0, 8)
    distractors: tuple[int, int] = (1, 5)
    background_contrast: float = 60.0
    min_visible: float = 0.2  # a placement that leaves any object less visible than this is retried
    difficult_visible: float = 0.4
    difficult_pixels: int = 150


@dataclass
class Scene:
    """A rendered scene: ``image`` (H, W, 3) uint8 BGR, ``labels`` (H, W) uint8 class indices with 255
    void, ``instances`` (H, W) uint8 object indices (1-based, XML order; 0 background; 255 void) and the
    annotation (0-based inclusive boxes)."""

    image: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    annotation: Annotation


OBJECT_TEXTURES = (2, 3, 4, 5)  # stripes, checks, blotches, dots
BACKGROUND_TEXTURES = (0, 1, 4)  # flat, gradient, blotches


def texture(rng, h: int, w: int, kinds=OBJECT_TEXTURES, contrast: float | None = None) -> np.ndarray:
    """(h, w, 3) float32 fill in 0..255 of one of ``kinds`` (0 flat, 1 gradient, 2 stripes, 3 checks,
    4 blotches, 5 dots) between two random colours: at most ``contrast`` apart per channel, or, when
    ``contrast`` is None, at least 60 apart on average (a visible pattern)."""
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    if contrast is None:
        c2 = rng.uniform(0, 255, 3).astype(np.float32)
        if np.abs(c2 - c1).mean() < 60:
            c2 = 255 - c1
    else:
        c2 = np.clip(c1 + rng.uniform(-contrast, contrast, 3), 0, 255).astype(np.float32)
    theta = rng.uniform(0, np.pi)
    y, x = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == 0:
        t = np.zeros((h, w), np.float32)
    elif kind == 1:
        t = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    elif kind == 2:
        t = np.clip(2.5 * np.sin(u * (2 * np.pi / rng.uniform(5, 24))) + 0.5, 0, 1)
    elif kind == 3:
        cell = rng.uniform(4, 18)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    elif kind == 4:
        s = rng.uniform(6, 40)
        small = rng.random((int(h / s) + 2, int(w / s) + 2)).astype(np.float32)
        t = np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * 1.6 - 0.3, 0, 1)
    else:
        p = rng.uniform(3, 9)
        t = ((np.sin(u / p) * np.sin(v / p)) > 0.5).astype(np.float32)
    return c1 + t[..., None] * (c2 - c1)


class _Canvas:
    """The image being painted plus the map of which object owns each pixel (0 = background)."""

    def __init__(self, rng, h: int, w: int, background_contrast: float):
        self.rng, self.h, self.w, self.background_contrast = rng, h, w, background_contrast
        self.image = texture(rng, h, w, BACKGROUND_TEXTURES, background_contrast)
        self.owner = np.zeros((h, w), np.uint8)

    def window(self, shape: shapes.Shape):
        """Mask of a pixel-unit shape clipped to the image, its top-left (x, y), and its unclipped area."""
        x0, y0, x1, y1 = (int(np.floor(v)) for v in shape.bounds())
        full = shapes.rasterize(shape, (x0, y0), (y1 - y0 + 2, x1 - x0 + 2))
        cx0, cy0 = min(max(x0, 0), self.w), min(max(y0, 0), self.h)
        cx1, cy1 = max(min(x1 + 2, self.w), cx0), max(min(y1 + 2, self.h), cy0)
        mask = full[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        return mask, (cx0, cy0), int(full.sum())

    def paint(self, mask: np.ndarray, origin, owner: int, shade: bool, background: bool = False) -> None:
        """Composite a fresh texture through ``mask`` (soft 1-px edge), with contrast against what is under it."""
        (x, y), (h, w) = origin, mask.shape
        if h == 0 or w == 0 or not mask.any():
            return
        region = self.image[y:y + h, x:x + w]
        fill = (texture(self.rng, h, w, BACKGROUND_TEXTURES, self.background_contrast) if background
                else texture(self.rng, h, w))
        inside = mask.astype(bool)
        # Keep the object's mean colour apart from what it covers, or its outline (its class) vanishes.
        if np.abs(fill[inside].mean(0) - region[inside].mean(0)).mean() < 35:
            fill = fill * 0.45 + (0 if region[inside].mean() > 128 else 140)
        if shade:
            fill *= shading(self.rng, h, w)
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0.6)[..., None]
        region[:] = region * (1 - alpha) + fill * alpha
        self.owner[y:y + h, x:x + w][inside] = owner


def shading(rng, h: int, w: int) -> np.ndarray:
    """(h, w, 1) multiplicative linear shading ramp, up to +-0.2 along each axis of the object."""
    gy, gx = rng.uniform(-0.4, 0.4, 2) / max(h, w)
    y, x = np.arange(h)[:, None] - h / 2, np.arange(w)[None, :] - w / 2
    return (1 + gx * x + gy * y).astype(np.float32)[..., None]


def _clutter(canvas: _Canvas, rng, n: int) -> None:
    """Thin lines and arcs in random colours: edges everywhere that belong to no object."""
    for _ in range(n):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        thick = int(rng.integers(1, 4))
        cx, cy = int(rng.integers(0, canvas.w)), int(rng.integers(0, canvas.h))
        if rng.random() < 0.5:
            length, ang = rng.uniform(10, 150), rng.uniform(0, 2 * np.pi)
            end = (int(cx + length * np.cos(ang)), int(cy + length * np.sin(ang)))
            cv2.line(canvas.image, (cx, cy), end, color, thick, cv2.LINE_AA)
        else:
            axes = (int(rng.integers(5, 80)), int(rng.integers(5, 80)))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(canvas.image, (cx, cy), axes, float(rng.uniform(0, 180)), start,
                        start + float(rng.uniform(30, 200)), color, thick, cv2.LINE_AA)


def _regions(canvas: _Canvas, rng, n: int) -> None:
    """Large straight-edged textured patches (walls, floors) under everything else."""
    for _ in range(n):
        centre = rng.uniform((0, 0), (canvas.w, canvas.h))
        pts = centre + rng.uniform(60, 260) * rng.uniform(-1, 1, (int(rng.integers(3, 7)), 2))
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        x0, y0 = np.clip(hull.min((0, 1)), 0, None)
        x1, y1 = np.minimum(hull.max((0, 1)), (canvas.w - 1, canvas.h - 1))
        if x1 >= x0 and y1 >= y0:
            mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
            cv2.fillPoly(mask, [hull - (x0, y0)], 1)
            canvas.paint(mask, (int(x0), int(y0)), 0, shade=False, background=True)


def _place(canvas: _Canvas, rng, shape: shapes.Shape) -> shapes.Shape:
    """Shift a shape so at least ~70 % of its bounds fall inside the image along each axis when it fits."""
    x0, y0, x1, y1 = shape.bounds()
    bw, bh = x1 - x0, y1 - y0
    dx = rng.uniform(*sorted((-0.3 * bw, canvas.w - 0.7 * bw))) - x0
    dy = rng.uniform(*sorted((-0.3 * bh, canvas.h - 0.7 * bh))) - y0
    return shape.map(lambda p: p + (dx, dy))


class _Objects:
    """Bookkeeping of placed objects: pixel counts per owner id (index 0 unused)."""

    def __init__(self):
        self.classes, self.full, self.inside, self.visible = [0], [0], [0], [0]

    def try_cover(self, canvas: _Canvas, mask, origin, min_visible: float) -> bool:
        """If painting ``mask`` at ``origin`` leaves every placed object at least ``min_visible`` visible,
        book the pixels it hides and return True; otherwise change nothing and return False."""
        (x, y), (h, w) = origin, mask.shape
        covered = canvas.owner[y:y + h, x:x + w][mask.astype(bool)]
        visible = np.array(self.visible) - np.bincount(covered, minlength=len(self.full))
        if np.any(visible[1:] < min_visible * np.array(self.full[1:])):
            return False
        self.visible = [int(v) for v in visible]
        return True

    def add(self, cls: int, full: int, inside: int) -> int:
        self.classes.append(cls)
        self.full.append(full)
        self.inside.append(inside)
        self.visible.append(inside)
        return len(self.classes) - 1


def _plan(rng, cfg: SceneConfig) -> list[float]:
    """Target sqrt(box area) in px of each object, largest first (painted first, so smaller ones occlude)."""
    while True:
        sizes = [float(np.exp(rng.uniform(*np.log(BUCKETS[b])))) for b, lo, hi in cfg.counts
                 for _ in range(int(rng.integers(lo, hi + 1)))]
        if sizes:
            return sorted(sizes, reverse=True)


def render_scene(rng, image_id: str, cfg: SceneConfig = SceneConfig()) -> Scene:
    """Draw one scene from ``rng`` (a ``numpy.random.Generator``)."""
    w, h = (500, 375) if rng.random() < 0.7 else (375, 500)
    canvas, objs = _Canvas(rng, h, w, cfg.background_contrast), _Objects()
    _regions(canvas, rng, int(rng.integers(*cfg.regions)))
    _clutter(canvas, rng, int(rng.integers(*cfg.clutter)))
    for _ in range(int(rng.integers(*cfg.distractors))):
        _paint_distractor(canvas, rng, cfg, objs, (12, 160))
    for target in _plan(rng, cfg):
        cls = int(rng.integers(1, len(SYNTH_CLASSES)))
        shape = shapes.deform(rng, shapes.SHAPES[SYNTH_CLASSES[cls]](rng), cfg.elastic, cfg.bend, cfg.aspect)
        shape = shapes.to_pixels(shape, target)
        x0, y0, x1, y1 = shape.bounds()
        fit = min(1.0, 1.2 * w / (x1 - x0), 1.2 * h / (y1 - y0))  # a very elongated large object would never fit
        shape = shapes.to_pixels(shape, target * fit) if fit < 1 else shape
        for _ in range(12):
            mask, origin, full = canvas.window(_place(canvas, rng, shape))
            inside = int(mask.sum())
            if inside >= 0.55 * full and objs.try_cover(canvas, mask, origin, cfg.min_visible):
                canvas.paint(mask, origin, objs.add(cls, full, inside), shade=True)
                break
    for _ in range(int(rng.integers(0, 3))):  # occluders in front of objects
        _paint_distractor(canvas, rng, cfg, objs, (12, 100))
    image = canvas.image + np.float32(rng.uniform(2, 6)) * rng.standard_normal(canvas.image.shape, np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return _labelled(image, canvas.owner, objs, image_id, cfg)


def _paint_distractor(canvas: _Canvas, rng, cfg: SceneConfig, objs: _Objects, size_range) -> None:
    kind = shapes.DISTRACTORS[int(rng.integers(len(shapes.DISTRACTORS)))]
    shape = shapes.deform(rng, shapes.distractor(rng, kind), 0, 0, cfg.aspect, rigid=True)
    shape = shapes.to_pixels(shape, float(np.exp(rng.uniform(*np.log(size_range)))))
    mask, origin, _ = canvas.window(_place(canvas, rng, shape))
    if objs.try_cover(canvas, mask, origin, cfg.min_visible):
        canvas.paint(mask, origin, 0, shade=False)


def _labelled(image, owner, objs: _Objects, image_id: str, cfg: SceneConfig) -> Scene:
    kernel = np.ones((3, 3), np.uint8)
    band = cv2.dilate(owner, kernel) != cv2.erode(owner, kernel)
    labels = np.asarray(objs.classes, np.uint8)[owner]
    labels[band] = VOID
    instances = owner.copy()
    instances[band] = VOID
    objects = []
    for k in range(1, len(objs.classes)):
        ys, xs = np.nonzero(owner == k)
        objects.append(VOCObject(
            name=SYNTH_CLASSES[objs.classes[k]],
            box=(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())),
            difficult=objs.visible[k] < cfg.difficult_visible * objs.full[k] or objs.visible[k] < cfg.difficult_pixels,
            truncated=objs.inside[k] < objs.full[k], occluded=objs.visible[k] < objs.inside[k]))
    h, w = owner.shape
    return Scene(image, labels, instances, Annotation(image_id, w, h, 3, tuple(objects), segmented=True))


# ---------------------------------------------------------------------------------------------- writing
_SPLIT_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_FOLDERS = ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject")


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of ``split``: independent of every other scene and split."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def image_ids(split: str, images: int) -> list[str]:
    return [f"{split}_{i:06d}" for i in range(images)]


def write_scene(folder: Path, scene: Scene) -> None:
    """Write one scene's four files (JPEG quality 90, XML, two palette PNGs) under ``folder``."""
    image_id = scene.annotation.image_id
    ok, jpg = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {image_id}.jpg")
    write_bytes_atomic(folder / "JPEGImages" / f"{image_id}.jpg", jpg.tobytes())
    write_bytes_atomic(folder / "Annotations" / f"{image_id}.xml",
                       annotation_xml(scene.annotation, folder="dcnviz-synth", database="dcnviz synth"))
    palette = voc_palette()
    for kind, labels in (("SegmentationClass", scene.labels), ("SegmentationObject", scene.instances)):
        write_png_palette_atomic(folder / kind / f"{image_id}.png", np.ascontiguousarray(labels, np.uint8), palette)


def _check_free(out: Path, split: str, ids: list[str]) -> None:
    for task in ("Main", "Segmentation"):
        if (out / "ImageSets" / task / f"{split}.txt").exists():
            raise UserError(f"split {split!r} already exists in {out} (ImageSets/{task}/{split}.txt); "
                            f"choose another --split or output folder")
    taken = [i for i in ids if any((out / d / f"{i}{'.xml' if d == 'Annotations' else '.jpg'}").exists()
                                   for d in ("JPEGImages", "Annotations"))]
    if taken:
        raise UserError(f"image id {taken[0]} already exists in {out} ({len(taken)} ids taken); not overwriting")


def generate(out, images: int, seed: int, split: str = "train", cfg: SceneConfig = SceneConfig(),
             progress=None) -> list[str]:
    """Write ``images`` scenes as split ``split`` of the VOC-layout dataset in ``out`` and return their ids
    (``<split>_<index:06d>``). Other splits already in ``out`` are left untouched; an existing split of
    the same name or an existing image id is an error. Files are written to a staging folder inside
    ``out`` and moved into place only once every scene is done, so a failed run leaves nothing behind.
    ``progress`` (optional) is called with each finished index."""
    if images < 1:
        raise UserError(f"--images must be at least 1, got {images}")
    if seed < 0:
        raise UserError(f"--seed must be non-negative, got {seed}")
    if not split or not set(split) <= _SPLIT_CHARS:
        raise UserError(f"--split must be letters, digits, '_' or '-', got {split!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    ids = image_ids(split, images)
    _check_free(out, split, ids)
    stage = out / f".synth-{split}.partial"
    if stage.exists():
        raise UserError(f"{stage} is left over from an interrupted run; remove it first")
    try:
        for folder in _FOLDERS:
            (stage / folder).mkdir(parents=True)
        for index, image_id in enumerate(ids):
            write_scene(stage, render_scene(scene_rng(seed, split, index), image_id, cfg))
            if progress is not None:
                progress(index)
        _check_free(out, split, ids)  # another process may have written meanwhile
        for folder in _FOLDERS:
            (out / folder).mkdir(exist_ok=True)
            for path in sorted((stage / folder).iterdir()):
                path.replace(out / folder / path.name)
        write_split(out / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
        write_split(out / "ImageSets" / "Main" / f"{split}.txt", ids)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ids
