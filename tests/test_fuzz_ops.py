"""Property-based fuzzing of the three ops on CPU (CUDA where present): random shapes including empty
batches, zero channels and 1x1 maps, non-contiguous and channels-last inputs, offsets holding
NaN/+-inf/1e30, RoIs inverted, outside the map, NaN or with a batch index out of range. Each call returns
a finite output of the right shape equal to the pure-torch reference (float64), or raises a clear
ValueError/RuntimeError; it never crashes or hangs.

The examples are derandomized (the same on every run) and their number is ``DCNVIZ_FUZZ_EXAMPLES``
(default 100 per test), so CI time stays fixed.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcnviz.ops import deform_conv2d, deform_psroi_pool, psroi_pool
from dcnviz.ops import reference

EXAMPLES = int(os.environ.get("DCNVIZ_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SPECIAL = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _values(draw, shape, scale: float, special: bool) -> torch.Tensor:
    """Float64 values ~ N(0, scale), seeded by hypothesis, with some replaced by NaN/inf/1e30."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    if special and t.numel():
        for _ in range(draw(st.integers(0, 3))):
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(SPECIAL))
    return t


def _layout(draw, t: torch.Tensor) -> torch.Tensor:
    """The same values as contiguous, non-contiguous (a strided view into a larger buffer) or channels-last."""
    kind = draw(st.sampled_from(["contiguous", "strided", "channels_last"]))
    if kind == "strided":
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype)
        big[..., ::2][..., :t.shape[-1]] = t
        view = big[..., ::2][..., :t.shape[-1]]
        return view
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def _check(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-9, atol=1e-9)


@st.composite
def conv_case(draw):
    groups = draw(st.sampled_from([1, 2]))
    c = groups * draw(st.sampled_from([0, 1, 2]))
    dg = draw(st.sampled_from([d for d in (1, 2) if c % d == 0 or c == 0]))
    n, h, w = draw(st.integers(0, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, pad, dil = draw(st.integers(1, 2)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
    f = groups * draw(st.integers(1, 2))
    ho = (h + 2 * pad - (dil * (kh - 1) + 1)) // stride + 1
    wo = (w + 2 * pad - (dil * (kw - 1) + 1)) // stride + 1
    x = _layout(draw, _values(draw, (n, c, h, w), 1.0, False))
    offset = _values(draw, (n, 2 * dg * kh * kw, max(ho, 1), max(wo, 1)), 2.0, draw(st.booleans()))
    weight = _values(draw, (f, c // groups, kh, kw), 1.0, False)
    bias = _values(draw, (f,), 1.0, False) if draw(st.booleans()) else None
    kwargs = dict(stride=stride, padding=pad, dilation=dil, groups=groups, deformable_groups=dg)
    return x, offset, weight, bias, kwargs, ho >= 1 and wo >= 1


@pytest.mark.parametrize("device", DEVICES)
@FUZZ
@given(case=conv_case())
def test_deform_conv2d(device, case):
    x, offset, weight, bias, kwargs, fits = case
    args = [t.to(device) if t is not None else None for t in (x, offset, weight, bias)]
    if not fits:
        with pytest.raises((ValueError, RuntimeError)):
            deform_conv2d(*args, **kwargs)
        return
    _check(deform_conv2d(*args, **kwargs), reference.deform_conv2d(x, offset, weight, bias, **kwargs))


@st.composite
def rois_case(draw, batch: int, h: int, w: int, scale: float):
    """RoIs in image pixels: inside, inverted, outside the map, and (when ``bad``) NaN or a batch index
    out of range."""
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["inside", "inverted", "outside", "nan", "batch"]))
        b = draw(st.integers(0, batch - 1))
        x1, y1 = draw(st.floats(0, w / scale)), draw(st.floats(0, h / scale))
        x2, y2 = draw(st.floats(0, w / scale)), draw(st.floats(0, h / scale))
        if kind == "inside":
            x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        elif kind == "inverted":
            x1, x2, y1, y2 = max(x1, x2), min(x1, x2), max(y1, y2), min(y1, y2)
        elif kind == "outside":
            x1, x2 = x1 + 3 * w / scale, x2 - 3 * w / scale
        elif kind == "nan":
            x1 = float("nan")
        else:
            b = draw(st.sampled_from([-1, batch, batch + 7]))
        rows.append([float(b), x1, y1, x2, y2])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 5)


def _valid(rois: torch.Tensor, batch: int) -> bool:
    return bool(torch.isfinite(rois).all()) and bool(((rois[:, 0] >= 0) & (rois[:, 0] < batch)).all())


@st.composite
def pool_case(draw, deform: bool):
    # maps up to 12 pixels a side: the CPU kernels sum a bin on an 8x8 window only where the map is that
    # large, and take their general path on smaller ones
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    group, pooled = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # group 1 with up to 20 channels: the channels-last kernel of group 1 sums whole vectors of channels
    # (8 float64 or 16 float32 on AVX-512) and then the rest
    output_dim = draw(st.integers(1, 20 if group == 1 else 3))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    x = _layout(draw, _values(draw, (n, output_dim * group * group, h, w), 1.0, False))
    rois = draw(rois_case(n, h, w, scale))
    kwargs = dict(spatial_scale=scale, output_dim=output_dim, group_size=group, pooled_size=pooled)
    offset = None
    if deform:
        part = draw(st.integers(1, 3))
        kwargs.update(part_size=part, sample_per_part=draw(st.integers(1, 3)),
                      trans_std=draw(st.sampled_from([0.0, 0.1, 1.0])))
        if draw(st.booleans()):
            classes = draw(st.sampled_from([c for c in (1, output_dim) if output_dim % c == 0]))
            offset = _values(draw, (rois.shape[0], 2 * classes, part, part), 1.0, draw(st.booleans()))
    return x, rois, offset, kwargs


@pytest.mark.parametrize("device", DEVICES)
@FUZZ
@given(case=pool_case(deform=False))
def test_psroi_pool(device, case):
    x, rois, _, kwargs = case
    if not _valid(rois, x.shape[0]):
        with pytest.raises(ValueError, match="rois"):
            psroi_pool(x.to(device), rois.to(device), **kwargs)
        # straight to the kernel: unusable RoIs give zeros, never a read outside the input
        raw = torch.ops.dcnviz.psroi_pool(x.to(device), rois.to(device), kwargs["spatial_scale"],
                                          kwargs["output_dim"], kwargs["group_size"], kwargs["pooled_size"])
        assert raw.shape == (rois.shape[0], kwargs["output_dim"], kwargs["pooled_size"], kwargs["pooled_size"])
        assert bool(torch.isfinite(raw).all())
        return
    _check(psroi_pool(x.to(device), rois.to(device), **kwargs), reference.psroi_pool(x, rois, **kwargs))


@pytest.mark.parametrize("device", DEVICES)
@FUZZ
@given(case=pool_case(deform=True))
def test_deform_psroi_pool(device, case):
    x, rois, offset, kwargs = case
    dev = [t.to(device) if t is not None else None for t in (x, rois, offset)]
    if not _valid(rois, x.shape[0]):
        with pytest.raises(ValueError, match="rois"):
            deform_psroi_pool(*dev, **kwargs)
        raw = torch.ops.dcnviz.deform_psroi_pool(*dev, kwargs["spatial_scale"], kwargs["output_dim"],
                                                 kwargs["group_size"], kwargs["pooled_size"], kwargs["part_size"],
                                                 kwargs["sample_per_part"], kwargs["trans_std"])
        assert bool(torch.isfinite(raw).all())
        return
    _check(deform_psroi_pool(*dev, **kwargs), reference.deform_psroi_pool(x, rois, offset, **kwargs))


@FUZZ
@given(case=pool_case(deform=True))
def test_deform_psroi_pool_bfloat16(case):
    """The CPU's bfloat16 forward (each channel's planes widened in cache, bins rounded as they are stored;
    channels-last group-1 features summed into a float32 buffer) on any case, unusable RoIs included
    (straight to the kernel): the float32 forward of the same rounded inputs, rounded once."""
    x, rois, offset, kwargs = case
    low = [t.bfloat16() if t is not None else None for t in (x, rois, offset)]
    args = [kwargs[k] for k in ("spatial_scale", "output_dim", "group_size", "pooled_size", "part_size",
                                "sample_per_part", "trans_std")]
    got = torch.ops.dcnviz.deform_psroi_pool(*low, *args)
    want = torch.ops.dcnviz.deform_psroi_pool(*[t.float() if t is not None else None for t in low], *args)
    assert got.dtype == torch.bfloat16 and got.stride() == want.stride()
    assert torch.equal(got, want.bfloat16())
