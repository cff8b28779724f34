"""Where deformable PS RoI pooling puts the parts of one RoI (paper Fig. 7), in original-image pixels.

The placement is not re-derived here: :func:`dcnviz.ops.reference.pooling.deform_bin_starts` states it
once for the reference operator and for this figure (RoI corners rounded half away from zero, scaled by
``spatial_scale``, shifted by -0.5; bin (ph, pw) moved by ``offset * trans_std * roi_size`` with the
offset of part cell ``floor(ph / P * part_size)``; class c reads offset channels 2c = dx, 2c + 1 = dy).
A feature-map position u (pixel centres at integers, as the operator counts) is image position
``(u + 0.5) / spatial_scale / scale`` (:func:`dcnviz.analysis.feature_to_image`), so the unshifted RoI
spans exactly the input pixels round(x1) .. round(x2) divided by the resize factor.

Rectangles are ``[x1, y1, x2, y2]`` continuous edges in original-image pixels (pixel k covers [k, k+1)),
not the inclusive corners of detection boxes: a bin covers [x1, x2) x [y1, y2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dcnviz.analysis._common import as_float64, positive_number
from dcnviz.analysis.coords import feature_to_image

__all__ = ["RoIParts", "pool_offsets", "roi_parts"]


@dataclass(frozen=True)
class RoIParts:
    """The parts of one RoI, rectangles ``[x1, y1, x2, y2]`` (continuous edges, original-image pixels).

    roi: (4,) the RoI as the operator pools it (after rounding).
    bins: (P, P, 4) the bins moved by the learned offsets, row ph, column pw.
    regular: (P, P, 4) the same bins without offsets (they tile ``roi``).
    """

    roi: np.ndarray
    bins: np.ndarray
    regular: np.ndarray


def roi_parts(roi, offset, class_index: int, *, scale: float, spatial_scale: float, pooled_size: int,
              part_size: int, trans_std: float) -> RoIParts:
    """Parts of one RoI of deformable PS RoI pooling, as the operator applies its offsets.

    Args:
        roi: ``[x1, y1, x2, y2]`` (or a ``rois`` row ``[batch, x1, y1, x2, y2]``) in network-input pixels,
            inclusive corners, as given to the operator.
        offset: this RoI's offsets (2*C, part_size, part_size), normalised by the RoI size (the model's
            ``rfcn_cls_offset`` row: channel 2c is dx, 2c + 1 is dy of class c).
        class_index: c, the class whose offsets move the parts.
        scale: the image's resize factor (``Prep.scale``); spatial_scale, pooled_size, part_size,
            trans_std: the operator's parameters (the model's ``part_geometry``).
    """
    r = as_float64(roi, "roi").reshape(-1)
    if r.shape not in ((4,), (5,)) or not np.isfinite(r).all():
        raise ValueError(f"roi must be finite [x1, y1, x2, y2] or [batch, x1, y1, x2, y2], got {roi!r}")
    off = as_float64(offset, "offset")
    if off.ndim != 3 or off.shape[0] % 2 or off.shape[1:] != (part_size, part_size):
        raise ValueError(f"offset must have shape (2*C, {part_size}, {part_size}), got {tuple(off.shape)}")
    if not 0 <= class_index < off.shape[0] // 2:
        raise ValueError(f"class_index must be in [0, {off.shape[0] // 2}), got {class_index}")
    stride = 1.0 / positive_number(spatial_scale, "spatial_scale")
    from dcnviz.ops.reference.pooling import deform_bin_starts  # loads the ops package only when needed

    rois = torch.from_numpy(np.concatenate([[0.0], r[-4:]]))[None]
    kwargs = dict(batch_size=1, spatial_scale=spatial_scale, pooled_size=pooled_size, part_size=part_size,
                  trans_std=trans_std)
    cls = torch.tensor([class_index])

    def rectangles(moved) -> np.ndarray:
        _, _, wstart, hstart, bin_w, bin_h = deform_bin_starts(rois, moved, cls, **kwargs)
        x, y = wstart[0, 0].numpy(), hstart[0, 0].numpy()  # (P, P) top-left corners, feature pixels
        corners = np.stack([np.stack([y, x], -1), np.stack([y + bin_h.item(), x + bin_w.item()], -1)], -2)
        image = feature_to_image(corners, scale, stride)  # (P, P, 2 corners, (y, x))
        return image[..., ::-1].reshape(pooled_size, pooled_size, 4)  # [x1, y1, x2, y2]

    regular = rectangles(None)
    roi_rect = np.concatenate([regular[0, 0, :2], regular[-1, -1, 2:]])
    return RoIParts(roi_rect, rectangles(torch.from_numpy(off)[None]), regular)


def pool_offsets(offset, parts: int) -> np.ndarray:
    """A (2*C, P, P) part-offset array averaged down to (2*C, parts, parts), for the paper's 3x3 view of a
    7x7 model (Fig. 7 draws 3x3 bins; the official demo model has ``part_size`` 3, the COCO model 7).

    Part (i, j) of the result is the mean of the offsets of parts rows floor(P*i/parts) .. ceil(P*(i+1)/parts)-1
    and the same columns (adaptive average pooling: windows overlap where ``parts`` does not divide P). The
    offsets are fractions of the RoI size, so their mean moves a 3x3 bin as the 7x7 bins it covers move on
    average. This is a summary for the eye: the operator itself pools P x P bins with the P x P offsets.
    """
    off = as_float64(offset, "offset")
    if off.ndim != 3 or off.shape[1] != off.shape[2]:
        raise ValueError(f"offset must have shape (2*C, P, P), got {tuple(off.shape)}")
    if not 1 <= parts <= off.shape[1]:
        raise ValueError(f"parts must be in [1, {off.shape[1]}], got {parts}")
    return torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(off), parts).numpy()
