"""Look inside deformable layers: pure functions on captured offset maps (numpy/torch, no model code), and
:func:`inspect`, which runs a model once on an image and gathers them into an :class:`Inspection`.

Data flows one way: a model's forward captures offset maps -> this package -> rendering / JSON / tables.

Conventions (every function follows them):
- Inputs are torch tensors (any device; detached and copied to CPU) or numpy arrays; outputs are numpy
  arrays (float64 positions and dilations, integer cells and buckets).
- Offset layout (official release, torchvision): offset (N, 2*G*kh*kw, Ho, Wo); deformable group g owns
  channels [g*2*kh*kw, (g+1)*2*kh*kw); inside it, tap k = i*kw + j (row-major) has dy (rows) at channel 2k
  and dx (columns) at 2k + 1. Offsets are in feature-map cells of the layer's INPUT map.
- Feature positions are continuous (y, x) = (row, column) in cells, integers at cell centres. Tap k of
  output position p samples the input map at p*stride - pad + (i, j)*dilation + (dy_k, dx_k).
- Image positions are continuous (y, x) in ORIGINAL-image pixels, pixel k covering [k, k+1). A feature
  position p maps to image (p + 0.5) * stride / scale (``Prep.scale``, true feature stride), for
  activation units and sampling points alike (the official code draws the unit without the +0.5).
- Boxes are [x1, y1, x2, y2], 0-based with inclusive corners: area (x2-x1+1)*(y2-y1+1), covering
  [x1, x2+1) x [y1, y2+1).

Effective dilation (:func:`effective_dilation`): per output position and group, the mean distance over
the horizontally or vertically adjacent tap pairs (12 for 3x3; no diagonals), in input-map cells; zero
offsets give exactly the dilation. Per layer, from that layer's own taps.

Sampling locations (:func:`sampling_locations`): the (kh*kw)**L points of a unit through L layers (729
for the paper's three res5 layers), every tap kept with its own offset; offsets at fractional positions
read bilinearly (``round=True``: the official nearest-cell rule); out-of-map points kept and flagged
(``inside``/``valid``, the DCNv1 rule 0 <= y < H, 0 <= x < W); layer geometry given per layer
(:class:`LayerGeometry`); ``group`` an int, "all" or "mean".

Table 2 (:mod:`~dcnviz.analysis.buckets`, :class:`DilationStats`): a filter belongs to the bucket of the
smallest non-difficult GT box containing its centre ((i + 0.5) * stride / scale); small < 96² px,
medium 96²..224² with both exact values included, large > 224²; background outside every box;
positions only inside difficult boxes are left out. Statistics stream per layer x group x bucket
(count, mean, M2; ddof=0 std) with a histogram; groups pooled (each (position, group) one filter) or
per group. :data:`TABLE2_CONFIG` states all of this as a dict, :data:`PAPER_TABLE2` holds the paper's values.

Units (:mod:`~dcnviz.analysis.units`): activation units at given pixels, or picked on the background, a
small and a large object of a set of boxes. RoI parts (:func:`roi_parts`): the bins of deformable PS RoI
pooling where the operator puts them, in image pixels (paper Fig. 7).

Inspection (:mod:`~dcnviz.analysis.inspection`): :func:`inspect` runs a model once on an image and returns
an :class:`Inspection` (prediction, every deformable layer's offsets and geometry as :class:`LayerRecord` s,
sampling points of any unit, units chosen automatically, RoI parts of any detection or box); every
analysis command is a view of it.
"""
from dcnviz.analysis.buckets import (BACKGROUND, BUCKETS, EXCLUDED, LARGE, LARGE_MIN_AREA, MEDIUM, SMALL,
                                     SMALL_MAX_AREA, assign_buckets, box_areas, size_bucket)
from dcnviz.analysis.coords import feature_to_image, image_to_cell
from dcnviz.analysis.dilation import effective_dilation
from dcnviz.analysis.parts import RoIParts, roi_parts
from dcnviz.analysis.sampling import LayerGeometry, SamplingLocations, sampling_locations
from dcnviz.analysis.table2 import PAPER_TABLE2, TABLE2_CONFIG, DilationStats
from dcnviz.analysis.units import Unit, cell_unit, pick_units, segment_boxes, units_at
from dcnviz.analysis.inspection import (DEFAULT_LEVELS, Inspection, LayerRecord, PooledRoI, UnitChoice, UnitSamples,
                                        inspect, layer_records, select_layers)

__all__ = [
    "effective_dilation", "sampling_locations", "LayerGeometry", "SamplingLocations",
    "feature_to_image", "image_to_cell",
    "assign_buckets", "box_areas", "size_bucket", "BUCKETS", "SMALL", "MEDIUM", "LARGE", "BACKGROUND",
    "EXCLUDED", "SMALL_MAX_AREA", "LARGE_MIN_AREA",
    "DilationStats", "PAPER_TABLE2", "TABLE2_CONFIG",
    "Unit", "pick_units", "units_at", "cell_unit", "segment_boxes", "RoIParts", "roi_parts",
    "inspect", "Inspection", "LayerRecord", "UnitSamples", "UnitChoice", "PooledRoI", "layer_records",
    "select_layers", "DEFAULT_LEVELS",
]
