"""bfloat16 and float16 on the CPU: every op computes in float32 on the rounded inputs and rounds each
result once to the input's type (csrc/cpu/reduced_precision.h), forward and backward, except the
bfloat16 forward of deform_conv2d, which rounds its samples (the columns) to bfloat16 for a bfloat16 GEMM
with float32 accumulation, as a bfloat16 conv2d (and the CUDA forward) does.

Two statements per op and type: (1) exactly the float32 result on the same (rounded) inputs, rounded
once: 0.5 unit in the last place of the type, nothing accumulated in it (for that forward: the float32
GEMM of the rounded columns, rounded once, to the GEMM's own accumulation order); (2) against float32 on
unrounded values, the deviation a user sees, within 2**-6 (bfloat16: 8-bit significand) or 2**-9
(float16) of the largest value, i.e. a couple of units of the type for sums of a few dozen terms. The
sampling positions (offsets, RoIs) are rounded in both runs: a DCNv1 sample jumps from 0 to the edge
pixel where it enters the map, so a position rounded across that edge changes a value by a whole
pixel, which is the semantics, not an accumulation error.
"""
import pytest
import torch

from dcnviz.ops import deform_conv2d, deform_psroi_pool

from test_deform_psroi_pool import random_case
from test_thread_invariance import all_cases, forward_backward

BOUND = {torch.bfloat16: 2 ** -6, torch.float16: 2 ** -9}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_arithmetic_rounded_once(dtype):
    for name, fn, inputs, wrt in all_cases(torch.float32):
        low = [t.to(dtype) for t in inputs]
        got = forward_backward(fn, low, wrt)
        want = forward_backward(fn, [t.float() for t in low], wrt, grad_dtype=dtype)
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == dtype, name
            if i == 0 and dtype == torch.bfloat16 and name.startswith("deform_conv2d"):
                continue  # rounds its columns: test_bfloat16_deform_conv2d_rounds_its_columns
            assert torch.equal(g, w.to(dtype)), f"{name} {dtype} result {i}: max diff {(g.float() - w).abs().max()}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_deviation_from_float32(dtype):
    for name, fn, inputs, wrt in all_cases(torch.float32):
        geometry = {1} if name.startswith("deform_conv2d") else {1, 2}  # offsets; RoIs and offsets
        ref = [t.to(dtype).float() if i in geometry else t for i, t in enumerate(inputs)]
        got = forward_backward(fn, [t.to(dtype) for t in inputs], wrt)
        want = forward_backward(fn, ref, wrt)
        for i, (g, w) in enumerate(zip(got, want)):
            err, scale = (g.float() - w).abs().max().item(), w.abs().max().item()
            assert err <= BOUND[dtype] * scale, f"{name} {dtype} result {i}: max error {err} of max {scale}"


def _columns(x, off, k, dgroups, **kw):
    """deform_conv2d's samples (N, C*k*k, Ho, Wo), channel c*k*k + tap, from the op itself in x's dtype with
    one-hot weights: each output is one sample times 1 plus zeros, so exactly the sample."""
    c = x.shape[1]
    w = torch.zeros(c * k * k, c, k, k, dtype=x.dtype)
    for ch in range(c):
        for t in range(k * k):
            w[ch * k * k + t, ch, t // k, t % k] = 1
    return deform_conv2d(x, off, w, None, deformable_groups=dgroups, **kw)


@pytest.mark.parametrize("c, groups, dgroups, bias, channels_last", [
    (16, 2, 2, True, False), (40, 1, 1, False, False), (48, 2, 3, False, True)])
def test_bfloat16_deform_conv2d_rounds_its_columns(c, groups, dgroups, bias, channels_last):
    """The bfloat16 forward is the GEMM of the columns rounded to bfloat16 with the bfloat16 weight,
    accumulated in float32 and rounded once (then the bias added in bfloat16), NCHW or channels-last:
    within one bfloat16 unit of that sum taken in float64, where the columns kept in float32 are further off."""
    gen = torch.Generator().manual_seed(c)
    x = torch.randn(2, c, 9, 11, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, c // groups, 3, 3, generator=gen)
    b = torch.randn(16, generator=gen) if bias else None
    off = torch.randn(2, 2 * dgroups * 9, 9, 11, generator=gen) * 2
    kw = dict(padding=2, dilation=2)
    x16, off16, w16 = x.bfloat16(), off.bfloat16(), w.bfloat16()
    b16 = None if b is None else b.bfloat16()
    got = deform_conv2d(x16, off16, w16, b16, groups=groups, deformable_groups=dgroups, **kw)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last) == channels_last
    cols = _columns(x16.float(), off16.float(), 3, dgroups, **kw).double()  # (N, C*9, Ho, Wo)
    per_group = lambda cols: torch.cat([
        torch.einsum("fq,nqp->nfp", w16.double()[gi * (16 // groups):(gi + 1) * (16 // groups)].flatten(1),
                     cols[:, gi * (c // groups) * 9:(gi + 1) * (c // groups) * 9].flatten(2))
        for gi in range(groups)], dim=1).view(got.shape)
    exact = per_group(cols.bfloat16().double())
    want = exact.bfloat16() if b16 is None else (exact.bfloat16() + b16.view(1, -1, 1, 1))
    unit = 2.0 ** -7 * want.double().abs()  # one unit in the last place, at most
    err = (got.double() - want.double()).abs()
    assert (err <= unit + 1e-6 * exact.abs().max()).all(), f"max error {err.max()}"
    unrounded = per_group(cols).bfloat16()
    assert not torch.equal(unrounded, want)  # the case tells the two apart


@pytest.mark.parametrize("c", [40, 64])
def test_bfloat16_columns_are_rounded_to_nearest_even(c):
    """Each bfloat16 column is its float32 sample rounded as torch rounds (to nearest, ties to even): the op
    with bfloat16 one-hot weights gives its columns exactly (one product by 1, accumulated in float32, of
    a value bfloat16 holds), against the float32 columns rounded by torch. The values are products of few
    significant bits, so many samples are exact ties; 64 channels fill whole 32-value lines (the streamed
    stores), 40 do not."""
    gen = torch.Generator().manual_seed(c)
    x = torch.randint(-256, 256, (1, c, 7, 8), generator=gen).float() * 2.0 ** -5
    off = torch.randint(-8, 9, (1, 18, 7, 8), generator=gen).float() / 8  # bilinear weights of 3 bits
    x16, off16 = x.bfloat16(), off.bfloat16()
    assert torch.equal(x16.float(), x) and torch.equal(off16.float(), off)
    exact = _columns(x, off, 3, 1, padding=1)
    ties = exact.view(torch.int32) & 0xFFFF == 0x8000
    assert ties.sum() > 100 and (exact.bfloat16().float() != exact).sum() > ties.sum()
    assert torch.equal(_columns(x16, off16, 3, 1, padding=1), exact.bfloat16())


@pytest.mark.parametrize("group_size, channels_last", [(3, False), (1, True)])
def test_bfloat16_pooling_on_large_bins_and_batches(group_size, channels_last):
    """The bfloat16 deform_psroi_pool forward reads the map in bfloat16 (class scores: each channel's
    planes widened in turn; group 1 channels-last: features rounded as stored): the float32 result on
    the rounded inputs, rounded once, here with RoIs on both images and bins of up to ~12 pixels, which
    no window holds (the sample-grid path)."""
    x, rois, off, kw = random_case(batch=2, output_dim=3 if group_size == 3 else 32, group_size=group_size,
                                   height=40, width=44, rois=40, spatial_scale=1.0, sample_per_part=4,
                                   dtype=torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert (rois[:, 0] == 1).any() and ((rois[:, 3] - rois[:, 1]) / 3 > 10).any()
    low = [x.bfloat16(), rois.bfloat16(), off.bfloat16()]
    got = deform_psroi_pool(*low, **kw)
    want = deform_psroi_pool(*[t.float() for t in low], **kw)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want.bfloat16())
