"""Pure-PyTorch references of ``deform_psroi_pool`` and ``psroi_pool`` (official.md §3.2, §3.3).

Written for reading, not speed: every output bin is computed at once with broadcasting (psroi_pool
holds an (R, output_dim, P, P, H, W) tensor, so keep test cases small), and autograd through the same
formulas yields the official MXNet gradients. The compiled kernels are tested against these functions.

Coordinates: ``rois`` hold ``[batch_index, x1, y1, x2, y2]`` in input-image pixels with inclusive
corners; feature-map pixel ``(y, x)`` has its centre at integer ``(y, x)``.
Inputs are assumed checked by the public wrappers; a RoI with a batch index outside ``[0, N)`` or a
non-finite corner gives zeros, as in the kernels.
"""
from __future__ import annotations

import torch

__all__ = ["deform_bin_starts", "deform_psroi_pool", "psroi_pool"]


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """C's ``round()``: halves go away from zero (``torch.round`` rounds them to even).

    ``v - trunc(v)`` is exact in floating point, so this is also right just below a half
    (``floor(v + 0.5)`` is not: in float32, ``0.49999997 + 0.5`` rounds up to 1).
    """
    whole = v.trunc()
    return whole + torch.where((v - whole).abs() >= 0.5, v.sign(), torch.zeros_like(v))


def _roi_frame(rois: torch.Tensor, batch: int, spatial_scale: float, shift: float):
    """Per-RoI batch index, validity, start corner and size in feature-map pixels.

    start = round(x1)*s - shift, end = (round(x2) + 1)*s - shift, size = max(end - start, 0.1).
    """
    index = rois[:, 0]
    valid = torch.isfinite(rois).all(dim=1) & (index >= 0) & (index < batch)
    corners = _round_half_away(torch.where(valid[:, None], rois[:, 1:], torch.zeros_like(rois[:, 1:])))
    x_start = corners[:, 0] * spatial_scale - shift
    y_start = corners[:, 1] * spatial_scale - shift
    roi_w = ((corners[:, 2] + 1) * spatial_scale - shift - x_start).clamp(min=0.1)
    roi_h = ((corners[:, 3] + 1) * spatial_scale - shift - y_start).clamp(min=0.1)
    return torch.where(valid, index, 0).long(), valid, x_start, y_start, roi_w, roi_h


def _position_channels(output_dim: int, group_size: int, pooled_size: int, device) -> torch.Tensor:
    """(output_dim, P, P) input channel read by output bin (ctop, ph, pw): (ctop*G + gh)*G + gw,
    with gh = floor(ph*G/P) (likewise gw), so each bin reads its own position-sensitive channel."""
    g = (torch.arange(pooled_size, device=device) * group_size // pooled_size).clamp(0, group_size - 1)
    ctop = torch.arange(output_dim, device=device)
    return (ctop[:, None, None] * group_size + g[None, :, None]) * group_size + g[None, None, :]


def deform_bin_starts(rois, offset, offset_class, *, batch_size, spatial_scale, pooled_size, part_size,
                      trans_std, dtype=None):
    """Where deformable PS RoI pooling puts its bins: the one statement of the placement rule, shared by
    :func:`deform_psroi_pool` and the ``dcnviz rois`` figure.

    Args:
        rois: (R, 5) ``[batch_index, x1, y1, x2, y2]`` in input-image pixels, corners inclusive.
        offset: (R, 2*T, part_size, part_size) normalised offsets (channel 2t = dx, 2t + 1 = dy of offset
            class t), or None (no_trans).
        offset_class: (K,) long, the offset class read by each of K outputs (ignored without offsets).
        batch_size: N, the input's batch size (RoIs with another index are invalid).

    Returns ``(batch, roi_valid, wstart, hstart, bin_w, bin_h)``: per-RoI long batch index and bool
    validity (R,); the top-left corner (x, y) of every bin, (R, K, P, P) each, and the bin width and
    height (R,), in feature-map pixels (centre of pixel (y, x) at integer (y, x)). The RoI is rounded
    half away from zero, scaled by ``spatial_scale`` and shifted by -0.5; bin (ph, pw) reads the offset
    of part cell ``floor(ph / P * part_size)`` (likewise pw) and moves by ``offset * trans_std * roi_size``.
    """
    dtype = rois.dtype if dtype is None else dtype
    device = rois.device
    P = pooled_size
    batch, roi_valid, x_start, y_start, roi_w, roi_h = _roi_frame(rois, batch_size, spatial_scale, 0.5)
    bins = torch.arange(P, device=device, dtype=dtype)
    part = (bins / P * part_size).floor().long().clamp(max=part_size - 1)
    if offset is None:
        tx = ty = torch.zeros((rois.shape[0], len(offset_class), P, P), dtype=dtype, device=device)
    else:
        cell = offset[:, :, part[:, None], part[None, :]]  # (R, 2*classes, P, P)
        tx = cell[:, 2 * offset_class] * trans_std
        ty = cell[:, 2 * offset_class + 1] * trans_std
    bin_w, bin_h = roi_w / P, roi_h / P
    col = lambda v: v[:, None, None, None]  # noqa: E731  (per-RoI value against (k, p, q))
    wstart = bins[None, None, None, :] * col(bin_w) + col(x_start) + tx * col(roi_w)
    hstart = bins[None, None, :, None] * col(bin_h) + col(y_start) + ty * col(roi_h)
    return batch, roi_valid, wstart, hstart, bin_w, bin_h


def deform_psroi_pool(input, rois, offset=None, *, spatial_scale, output_dim, group_size, pooled_size,
                      part_size=None, sample_per_part=4, trans_std=0.0):
    """Reference of :func:`dcnviz.ops.deform_psroi_pool` (same arguments, shapes and semantics).

    input (N, output_dim*G*G, H, W); rois (R, 5); offset (R, 2*num_classes_trans, part, part) or None;
    returns (R, output_dim, P, P).
    """
    n_img, _, height, width = input.shape
    P, S = pooled_size, sample_per_part
    part_size = pooled_size if part_size is None else part_size
    dtype, device = input.dtype, input.device
    # output channel ctop reads offset class ctop // channels_each_class
    classes = 1 if offset is None else offset.shape[1] // 2
    offset_class = torch.arange(output_dim, device=device) // (output_dim // classes)
    batch, roi_valid, wstart, hstart, bin_w, bin_h = deform_bin_starts(
        rois, offset, offset_class, batch_size=n_img, spatial_scale=spatial_scale, pooled_size=P,
        part_size=part_size, trans_std=trans_std, dtype=dtype)
    col = lambda v: v[:, None, None, None]  # noqa: E731  (per-RoI value against (k, p, q))

    # Sample positions (R, output_dim, P, P, S, S): S*S points from each bin's top-left corner.
    steps = torch.arange(S, device=device, dtype=dtype)
    w = wstart[..., None, None] + steps[None, :] * (bin_w / S)[:, None, None, None, None, None]
    h = hstart[..., None, None] + steps[:, None] * (bin_h / S)[:, None, None, None, None, None]
    w, h = torch.broadcast_tensors(w, h)

    # Drop samples outside [-0.5, size-0.5] (NaN too), clamp the rest onto the map, interpolate
    # between floor and ceil (an integer coordinate reads a single row or column).
    valid = (w >= -0.5) & (w <= width - 0.5) & (h >= -0.5) & (h <= height - 0.5) & col(roi_valid)[..., None, None]
    w = torch.where(valid, w, torch.zeros_like(w)).clamp(0, width - 1)
    h = torch.where(valid, h, torch.zeros_like(h)).clamp(0, height - 1)
    x0, x1, y0, y1 = w.floor(), w.ceil(), h.floor(), h.ceil()
    lx, ly = w - x0, h - y0

    channel = _position_channels(output_dim, group_size, P, device)[None, :, :, :, None, None]
    plane = (batch[:, None, None, None, None, None] * input.shape[1] + channel) * (height * width)
    flat = input.reshape(-1)
    at = lambda y, x: flat[plane + y.long() * width + x.long()]  # noqa: E731
    value = ((1 - lx) * (1 - ly) * at(y0, x0) + lx * (1 - ly) * at(y0, x1)
             + (1 - lx) * ly * at(y1, x0) + lx * ly * at(y1, x1))
    total = torch.where(valid, value, torch.zeros_like(value)).sum(dim=(-2, -1))
    count = valid.sum(dim=(-2, -1))
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def psroi_pool(input, rois, *, spatial_scale, output_dim, group_size, pooled_size):
    """Reference of :func:`dcnviz.ops.psroi_pool`: each bin averages the whole pixels in
    ``[floor(start), ceil(end))`` (clipped to the map) of its position-sensitive channel; empty bins
    are 0. input (N, output_dim*G*G, H, W); rois (R, 5); returns (R, output_dim, P, P)."""
    n_img, _, height, width = input.shape
    P = pooled_size
    device = input.device
    batch, roi_valid, x_start, y_start, roi_w, roi_h = _roi_frame(rois, n_img, spatial_scale, 0.0)

    def pixel_mask(start, size, extent):
        """(R, P, extent) bool: pixel i lies in bin p of each RoI."""
        bins = torch.arange(P + 1, device=device, dtype=input.dtype)
        edges = bins[None, :] * (size / P)[:, None] + start[:, None]
        # As in the kernels, an edge that overflowed to NaN counts as 0 (0 * inf when a RoI spans ~1e38).
        lo = edges[:, :-1].floor().nan_to_num(nan=0.0).clamp(0, extent)
        hi = edges[:, 1:].ceil().nan_to_num(nan=0.0).clamp(0, extent)
        pixel = torch.arange(extent, device=device, dtype=input.dtype)
        return (pixel >= lo[..., None]) & (pixel < hi[..., None])

    mask_h = pixel_mask(y_start, roi_h, height) & roi_valid[:, None, None]
    mask_w = pixel_mask(x_start, roi_w, width)
    channel = _position_channels(output_dim, group_size, P, device)  # (k, p, q)
    maps = input[batch][:, channel]  # (R, k, p, q, H, W)
    total = torch.einsum("nkpqhw,nph,nqw->nkpq", maps, mask_h.to(input.dtype), mask_w.to(input.dtype))
    area = mask_h.sum(-1)[:, None, :, None] * mask_w.sum(-1)[:, None, None, :]
    return torch.where(area > 0, total / area.clamp(min=1), torch.zeros_like(total))
