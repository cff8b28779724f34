"""One look inside a deformable network on one image: :func:`inspect` runs the model once and returns an
:class:`Inspection`, from which every analysis view (``offsets``, ``rois``, ``receptive-field``,
``dilation-stats``, ``explore``) reads what it needs: the prediction, each deformable layer's captured
offsets and geometry, the composed sampling points of any unit, units chosen automatically, and the RoI
parts of any detection or box (computed on demand from the kept head input, without a second forward of
the backbone).

An :class:`Inspection` needs no model: build it from :class:`LayerRecord` s (a name, a
:class:`~dcnviz.analysis.LayerGeometry`, a feature stride and the captured offset map), the image's
:class:`~dcnviz.structures.Prep` and the image, with an optional prediction and RoI pooler. :func:`inspect`
is that for the registered R-FCN / DeepLab models.

Conventions (those of :mod:`dcnviz.analysis`):
- Layers are kept bottom -> top (forward order, ``res5a, res5b, res5c``); a *stack* (:meth:`Inspection.stack`)
  is top first, as :func:`~dcnviz.analysis.sampling_locations` takes it.
- A unit is an output cell (i, j) (row, column) of a stack's top layer; its image position is the cell
  centre ((j + 0.5) * s / scale, (i + 0.5) * s / scale) for a map of feature stride s, in ORIGINAL-image
  pixels (x, y), pixel k covering [k, k+1).
- Sampling points come back as feature positions of the bottom layer's input map and as image (x, y)
  (:class:`UnitSamples`), exactly what ``dcnviz offsets`` writes.
- Boxes are [x1, y1, x2, y2], 0-based with inclusive corners; RoI parts are continuous edges
  (:class:`~dcnviz.analysis.RoIParts`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from dcnviz.analysis.dilation import effective_dilation
from dcnviz.analysis.parts import RoIParts, pool_offsets, roi_parts
from dcnviz.analysis.sampling import LayerGeometry, SamplingLocations, sampling_locations
from dcnviz.analysis.units import KINDS, Unit, cell_unit, pick_units, segment_boxes, units_at
from dcnviz.models.postprocess import DEFAULT_CONF

__all__ = ["LayerRecord", "UnitSamples", "UnitChoice", "PooledRoI", "Inspection", "inspect", "layer_records",
           "select_layers", "DEFAULT_LEVELS"]

DEFAULT_LEVELS = 3


@dataclass(frozen=True)
class LayerRecord:
    """One deformable layer as captured on one image.

    name: the layer's name (``res5c``); geometry: its :class:`~dcnviz.analysis.LayerGeometry`;
    feature_stride: network-input pixels per cell of its OUTPUT map (the offset map's grid, 16 for res5);
    offset: the offset map (1, 2*G*kh*kw, Ho, Wo) or (2*G*kh*kw, Ho, Wo), torch tensor or numpy array, in
    cells of the layer's input map (layout of :mod:`dcnviz.analysis`).
    boundary: the layer's boundary rule, "dcnv1" (dcnviz.ops, the official models) or "dcnv2"
    (torchvision), which decides the points drawn hollow (:func:`~dcnviz.analysis.sampling.inside_rule`).
    input_size: (H, W) of the layer's input map when known (needed to compose through a strided layer).
    """

    name: str
    geometry: LayerGeometry
    feature_stride: int | float
    offset: object
    boundary: str = "dcnv1"
    input_size: tuple[int, int] | None = None

    @property
    def map_size(self) -> tuple[int, int]:
        """(Ho, Wo) of the output (offset) map."""
        return tuple(int(n) for n in self.offset.shape[-2:])

    @property
    def input_stride(self) -> float:
        """Network-input pixels per cell of the layer's INPUT map (``feature_stride / stride``)."""
        sh, sw = self.geometry.stride
        if sh != sw:
            raise ValueError(f"layer {self.name} has stride {self.geometry.stride}; image positions need equal strides")
        return self.feature_stride / sh

    def effective_dilation(self) -> np.ndarray:
        """(G, Ho, Wo) float64 effective dilation of every filter (:func:`~dcnviz.analysis.effective_dilation`)."""
        g = self.geometry
        offset = self.offset[0] if self.offset.ndim == 4 else self.offset
        return effective_dilation(offset, g.kernel_size, g.dilation, g.deformable_groups)


@dataclass(frozen=True)
class UnitSamples:
    """The composed sampling points of one unit: ``locations`` (feature positions of the stack's bottom
    input map, ``inside``/``valid`` flags) and ``xy`` their (x, y) positions in original-image pixels,
    (M, 2) or (G, M, 2) for ``group="all"``."""

    unit: Unit
    layers: tuple[str, ...]
    locations: SamplingLocations
    xy: np.ndarray


@dataclass(frozen=True)
class UnitChoice:
    """Units chosen automatically: ``units`` in the order of the kinds asked for, the ``boxes`` (B, 4)
    they were chosen on, where the boxes came from (``source``, a phrase) and the kinds that had no
    candidate (``missing``)."""

    units: list[Unit]
    boxes: np.ndarray
    source: str
    missing: tuple[str, ...]


@dataclass(frozen=True)
class PooledRoI:
    """One RoI pooled by the head: ``source`` "detection" or "box", the ``box`` asked for (inclusive
    corners, original pixels), the class whose offsets move the parts, the head's probability for it on
    this RoI (``cls_prob``, before box regression), the detection's score (None for a box), the
    ``parts`` (:class:`~dcnviz.analysis.RoIParts`), and what they were computed from: the RoI row as
    pooled (network-input pixels), its part offsets (2C, P, P) for R-FCN's class-specific offsets or
    (2, P, P) for the one offset field of deformable RoI pooling (Faster R-CNN, FPN: the same bins for
    every class), the ``spatial_scale`` it was pooled at and, for FPN, the pyramid ``level`` (2..5 for
    P2..P5) the RoI was assigned to."""

    source: str
    box: np.ndarray
    class_id: int
    class_name: str
    probability: float
    detection_score: float | None
    parts: RoIParts
    pooled_roi: np.ndarray | None = None
    offset: np.ndarray | None = None
    spatial_scale: float | None = None
    level: int | None = None

    @property
    def offset_class(self) -> int:
        """The channel pair of ``offset`` that moves the parts: the class for class-specific offsets, 0 for
        one shared offset field."""
        return self.class_id if self.offset.shape[0] > 2 else 0


# A RoI pooler: (R, 5) [0, x1, y1, x2, y2] input-pixel RoIs -> the head's blobs, at least ``rois``,
# ``cls_prob`` (R, C) and the part offsets: R-FCN's ``rfcn_cls_offset`` (R, 2C, P, P), or ``offset_reshape``
# (R, 2, P, P) of deformable RoI pooling (Faster R-CNN, FPN; FPN adds ``roi_level`` (R,), 0..3 = P2..P5).
RoIPooler = Callable[[np.ndarray], dict]


def select_layers(names: Sequence[str], top: str | None = None, levels: int | None = None,
                  default_levels: int = DEFAULT_LEVELS, strides: Sequence[float] | None = None) -> list[int]:
    """Indices into ``names`` (bottom -> top) of a stack: from ``top`` (default: the last) down,
    ``levels`` of them (default: ``default_levels`` or as many as there are below ``top``), top first.

    ``strides`` (the layers' feature strides) keeps a stack within layers of one stride: a layer's input
    map is the output map of the deformable layer below it only there (FPN DCN's res5a reads res4b22's
    output through res5a's strided 1x1 conv, res4b22 is 22 blocks above res3b3), so the default stops at
    a change of stride and asking for more levels is an error.

    Raises ValueError, naming the layers there are, for no layers, an unknown ``top`` or too many ``levels``."""
    names = list(names)
    if not names:
        raise ValueError("the model has no deformable conv layers")
    top = names[-1] if top is None else top
    if top not in names:
        raise ValueError(f"the model has no deformable layer {top!r}; its deformable layers are {', '.join(names)}")
    index = names.index(top)
    below = index + 1  # layers a stack from ``top`` can reach
    if strides is not None:
        below = next((index - i for i in range(index, -1, -1) if strides[i] != strides[index]), index + 1)
    levels_given = levels is not None
    levels = min(default_levels, below) if levels is None else levels
    if not 1 <= levels <= below:
        if levels_given and below < index + 1 and levels <= index + 1:
            lower = names[index - below]
            raise ValueError(f"{levels} levels from {top} cross from stride {strides[index]:g} to {lower} at stride "
                             f"{strides[index - below]:g}; a stack follows the deformable layers of one stride: at "
                             f"most {below} ({', '.join(names[index:index - below:-1])})")
        raise ValueError(f"{levels} levels from {top} need {levels} deformable layers at or below it; there "
                         f"{'is' if index == 0 else 'are'} {index + 1} ({', '.join(names[index::-1])})")
    return list(range(index, index - levels, -1))


def layer_records(model, offsets: dict) -> list[LayerRecord]:
    """The records of a registered model's deformable layers (``model.deformable_layers``, bottom -> top)
    with their offset maps from ``offsets`` (``captured`` of a prediction, or
    :func:`dcnviz.models.capture.capture_offsets`)."""
    from dcnviz.models.capture import short_name

    return [LayerRecord(short_name(layer), LayerGeometry(layer.kernel_size, layer.dilation, layer.padding,
                                                         layer.stride, layer.deformable_groups),
                        layer.feature_stride, offsets[layer.offset])
            for layer in model.deformable_layers]


class Inspection:
    """What one forward pass shows about one image (see the module docstring for the conventions).

    Args:
        layers: the deformable layers, bottom -> top (:class:`LayerRecord`).
        prep: the image's :class:`~dcnviz.structures.Prep`; image: the BGR uint8 (H, W, 3) image.
        result: the prediction (:class:`~dcnviz.structures.Detections` / ``Segmentation``) or None.
        class_names: the model's classes (default: the result's).
        roi_pooler, part_geometry: for models with deformable (PS) RoI pooling, a :data:`RoIPooler` and the
            operator's parameters (``spatial_scale``, ``pooled_size``, ``part_size``, ``trans_std``; FPN:
            ``spatial_scale`` is P2's, level l pools at ``spatial_scale / 2**l``).
    """

    def __init__(self, layers: Sequence[LayerRecord], prep, image: np.ndarray, result=None, *,
                 class_names: Sequence[str] | None = None, roi_pooler: RoIPooler | None = None,
                 part_geometry=None):
        self.layers = tuple(layers)
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")
        self.prep, self.image, self.result = prep, image, result
        self.class_names = tuple(class_names if class_names is not None else getattr(result, "class_names", ()))
        self.roi_pooler, self.part_geometry = roi_pooler, part_geometry

    @property
    def names(self) -> list[str]:
        """Layer names, bottom -> top."""
        return [layer.name for layer in self.layers]

    def layer(self, name: str | None = None) -> LayerRecord:
        """The layer called ``name`` (default: the top one)."""
        return self.layers[select_layers(self.names, name, 1)[0]]

    def stack(self, top: str | None = None, levels: int | None = None,
              default_levels: int = DEFAULT_LEVELS) -> list[LayerRecord]:
        """``levels`` layers from ``top`` down, top first (:func:`select_layers`)."""
        return [self.layers[i] for i in select_layers(self.names, top, levels, default_levels,
                                                      [layer.feature_stride for layer in self.layers])]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return tuple(self.image.shape[:2])

    def unit_at(self, x: float, y: float, layer: str | None = None) -> Unit:
        """The unit of ``layer`` (default: the top one) whose cell holds image position (x, y), original
        pixels (kind "at"; ``xy`` is the cell centre). ValueError when (x, y) is outside the image."""
        record = self.layer(layer)
        return units_at([(x, y)], record.map_size, self.prep.scale, record.feature_stride, self.image_size)[0]

    def unit(self, cell: tuple[int, int], layer: str | None = None) -> Unit:
        """The unit at output cell (i, j) of ``layer`` (default: the top one; kind "at"). ValueError for a
        cell outside the map."""
        record = self.layer(layer)
        return cell_unit(cell, record.map_size, self.prep.scale, record.feature_stride)

    def samples(self, unit: Unit | tuple[int, int], top: str | None = None, levels: int | None = None, *,
                group: int | str = 0, round: bool = False) -> UnitSamples:
        """The composed sampling points of ``unit`` (a :class:`~dcnviz.analysis.Unit` or an output cell
        (i, j) of ``top``) through ``levels`` layers from ``top`` down
        (:func:`~dcnviz.analysis.sampling_locations`; ``group`` an int, "all" or "mean"; ``round``: the
        official nearest-cell rule)."""
        stack = self.stack(top, levels)
        if not isinstance(unit, Unit):
            unit = self.unit(tuple(int(c) for c in unit), stack[0].name)
        found = sampling_locations([layer.offset for layer in stack], unit.cell, [layer.geometry for layer in stack],
                                   group=group, round=round, input_size=stack[-1].input_size,
                                   boundary=[layer.boundary for layer in stack])
        return UnitSamples(unit, tuple(layer.name for layer in stack), found,
                           found.image_xy(self.prep.scale, stack[-1].input_stride))

    def object_boxes(self, conf: float = DEFAULT_CONF, annotation=None) -> tuple[np.ndarray, str]:
        """Boxes (B, 4) to choose units on, and where they come from: ``annotation`` (a VOC XML path or a
        :class:`~dcnviz.data.voc.Annotation`; every object, difficult ones too), else the detections
        scoring >= ``conf``, else the connected components of the segmentation (background classes
        left out), else none. Raises :class:`~dcnviz.errors.UserError` for an annotation of another size."""
        from dcnviz.data.classes import background_ids
        from dcnviz.errors import UserError
        from dcnviz.structures import Detections, Segmentation

        if annotation is not None:
            from dcnviz.data.voc import parse_annotation

            ann = parse_annotation(annotation) if isinstance(annotation, (str, os.PathLike)) else annotation
            if (ann.height, ann.width) != self.image_size:
                raise UserError(f"{annotation} is for a {ann.width}x{ann.height} image, but the image is "
                                f"{self.image_size[1]}x{self.image_size[0]}")
            return ann.boxes().astype(np.float64), f"the objects of {annotation}"
        if isinstance(self.result, Detections):
            keep = np.asarray(self.result.scores) >= conf
            return np.asarray(self.result.boxes, np.float64)[keep], f"the detections with score >= {conf:g}"
        if isinstance(self.result, Segmentation):
            return segment_boxes(self.result.labels, background_ids(self.result.class_names)), "the segments"
        return np.zeros((0, 4)), "no prediction"

    def choose_units(self, kinds: Sequence[str] = KINDS, layer: str | None = None, conf: float = DEFAULT_CONF,
                     annotation=None) -> UnitChoice:
        """Units of ``layer`` (default: the top one) of the ``kinds`` ("background", "small", "large"),
        picked on :meth:`object_boxes` (:func:`~dcnviz.analysis.pick_units`)."""
        record = self.layer(layer)
        boxes, source = self.object_boxes(conf, annotation)
        units = pick_units(boxes, record.map_size, self.prep.scale, record.feature_stride, self.image_size, kinds)
        found = {u.kind for u in units}
        return UnitChoice(units, boxes, source, tuple(k for k in kinds if k not in found))

    @property
    def has_rois(self) -> bool:
        """Whether RoI parts can be computed (a model with deformable (PS) RoI pooling)."""
        return self.roi_pooler is not None

    def detection_rois(self, indices: Sequence[int] | None = None) -> list[PooledRoI]:
        """The RoIs of detections ``indices`` (default: all, in score order) of the result, each moved by
        the offsets of its detected class."""
        dets = self.result
        indices = np.arange(len(dets)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
        return self._pool("detection", np.asarray(dets.boxes, np.float64)[indices].reshape(-1, 4),
                          np.asarray(dets.labels)[indices], np.asarray(dets.scores)[indices])

    def box_rois(self, boxes, class_id: int | None = None) -> list[PooledRoI]:
        """The RoIs of given ``boxes`` (B, 4) (inclusive corners, original pixels), moved by the offsets
        of ``class_id``, or of each box's best-scoring non-background class (by the head's ``cls_prob`` on
        that very box)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        return self._pool("box", boxes, None if class_id is None else np.full(len(boxes), int(class_id)), None)

    def _pool(self, source: str, boxes: np.ndarray, classes, scores) -> list[PooledRoI]:
        if self.roi_pooler is None:
            raise ValueError("this model has no deformable RoI pooling")
        if not len(boxes):
            return []
        # the RoIs as the official demos (and ``predict(boxes=...)``) make them: scaled, rounded
        rois = np.hstack([np.zeros((len(boxes), 1)), np.round(boxes * self.prep.scale)]).astype(np.float32)
        blobs = self.roi_pooler(rois)
        prob = np.asarray(blobs["cls_prob"], np.float64)
        if classes is None:
            classes = 1 + prob[:, 1:].argmax(axis=1)  # class 0 is background
        g = self.part_geometry
        offsets = blobs["rfcn_cls_offset"] if "rfcn_cls_offset" in blobs else blobs["offset_reshape"]
        levels = np.asarray(blobs["roi_level"], np.int64) if "roi_level" in blobs else None
        found = []
        for k, c in enumerate(classes):
            level = None if levels is None else int(levels[k])
            spatial_scale = g.spatial_scale if level is None else g.spatial_scale / 2 ** level
            offset, row = np.asarray(offsets[k]), np.asarray(blobs["rois"][k], np.float64)
            parts = roi_parts(row, offset, int(c) if offset.shape[0] > 2 else 0, scale=self.prep.scale,
                              spatial_scale=spatial_scale, pooled_size=g.pooled_size, part_size=g.part_size,
                              trans_std=g.trans_std)
            found.append(PooledRoI(source, boxes[k], int(c), self.class_names[int(c)], float(prob[k, c]),
                                   None if scores is None else float(scores[k]), parts, row, offset, spatial_scale,
                                   None if level is None else 2 + level))
        return found

    def coarse_parts(self, roi: PooledRoI, parts: int) -> RoIParts:
        """``roi``'s parts in a ``parts`` x ``parts`` view (the paper's Fig. 7 draws 3x3): its P x P offsets
        averaged into that grid (:func:`~dcnviz.analysis.parts.pool_offsets`) and placed by the operator's
        rule as a ``parts`` x ``parts`` pooling would place them. A summary for the eye; the operator pools
        the P x P parts of ``roi.parts``."""
        g = self.part_geometry
        return roi_parts(roi.pooled_roi, pool_offsets(roi.offset, parts), roi.offset_class, scale=self.prep.scale,
                         spatial_scale=roi.spatial_scale, pooled_size=parts, part_size=parts, trans_std=g.trans_std)


def inspect(model, image) -> Inspection:
    """Run a registered model (``dcnviz.load_model``: R-FCN, Faster R-CNN, FPN or DeepLab) once on ``image`` (a path or a
    BGR uint8 (H, W, 3) array) and keep everything the analysis views read: the prediction, every
    deformable layer's offsets and geometry, and for deformable (PS) RoI pooling the head's input, so that
    RoI parts of any box are computed later by the head alone."""
    if isinstance(image, (str, os.PathLike)):
        from dcnviz.io.images import read_image

        image = read_image(image)
    parts = getattr(model, "part_geometry", None)
    pooler = None
    if parts is not None and parts.deformable:
        result = model.predict(image, keep_features=True)
        features = result.captured.pop("features")
        pooler = lambda rois: model.pool_rois(features, rois)  # noqa: E731  (keeps the features alive)
    else:
        result = model.predict(image)
    return Inspection(layer_records(model, result.captured), result.prep, image, result,
                      roi_pooler=pooler, part_geometry=parts if pooler is not None else None)
