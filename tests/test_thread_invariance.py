"""The CPU kernels give the same bits whatever the thread count (1 vs 2 threads), forward and backward,
for every op; and the hand-picked AVX-512 and AVX2 loops (deform_psroi_pool's lane loops, deform_conv2d's
streamed column stores, backward scatter and slope sums, the layout copies' register tiles and streamed
lines) give the bits of the generic x86-64 baseline loops.

Why bitwise equality is the right bar: every kernel splits work so that each output or gradient element
is computed by one thread, in an order fixed by the data, never by the split (deform_conv2d: columns
per (image, group), weight gradient one GEMM per group; the pooling ops: one input channel per thread in
the backward, per-bin terms summed in a fixed order for the offset gradient). The GEMMs of deform_conv2d
split their output among threads, not the reduction, so no tolerance is needed there either; if a
BLAS ever splits the reduction, the test says so instead of hiding it behind a tolerance.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dcnviz.models.boxes import nms
from dcnviz.ops import deform_conv2d, deform_psroi_pool, deform_roi_pool, psroi_pool
from test_anchors_proposal import random_boxes
from test_psroi_pool import random_case
from torch_threads import threads


def forward_backward(fn, inputs, wrt, seed=0, grad_dtype=None):
    """fn(*inputs) and the gradients of <fn, g> for a fixed random g (drawn in float32, rounded to
    grad_dtype if given, then given the output's dtype), with respect to inputs[i], i in wrt."""
    inputs = [t.detach().clone().requires_grad_(i in wrt) if t is not None else None for i, t in enumerate(inputs)]
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    g = g.to(grad_dtype or out.dtype).to(out.dtype)
    return [out.detach()] + list(torch.autograd.grad(out, [inputs[i] for i in wrt], g))


def conv_case(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 12, 14, generator=gen, dtype=dtype)
    w = torch.randn(8, 8, 3, 3, generator=gen, dtype=dtype)  # groups 2
    b = torch.randn(8, generator=gen, dtype=dtype)
    off = torch.randn(2, 2 * 2 * 9, 12, 14, generator=gen, dtype=dtype) * 2  # deformable_groups 2
    fn = lambda x, off, w, b: deform_conv2d(x, off, w, b, padding=2, dilation=2, groups=2, deformable_groups=2)
    return fn, [x, off, w, b], [0, 1, 2, 3]


def pool_cases(dtype):
    """(name, fn, inputs, wrt) of the pooling ops, with more RoIs than one lane block (16) and more work
    items than one thread's grain, so that 2 threads really split it. The RoIs are inputs[1]."""
    x, rois, kw = random_case(batch=2, output_dim=6, group_size=3, pooled_size=3, height=13, width=15, rois=40,
                              dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    off = torch.randn(40, 2 * 3, 3, 3, generator=gen, dtype=dtype)  # 3 offset classes of 2 channels each
    dkw = dict(kw, part_size=3, sample_per_part=3)
    yield "psroi_pool", lambda x, rois: psroi_pool(x, rois, **kw), [x, rois], [0]
    yield ("deform_psroi_pool", lambda x, rois, off: deform_psroi_pool(x, rois, off, trans_std=0.1, **dkw),
           [x, rois, off], [0, 2])
    yield "deform_psroi_pool no-trans", lambda x, rois: deform_psroi_pool(x, rois, None, **dkw), [x, rois], [0]
    x1 = x[:, :8].contiguous()
    off1 = torch.randn(40, 2, 3, 3, generator=gen, dtype=dtype)
    yield ("deform_roi_pool", lambda x, rois, off: deform_roi_pool(x, rois, off, spatial_scale=kw["spatial_scale"],
                                                                   pooled_size=3, sample_per_part=2, trans_std=0.2),
           [x1, rois, off1], [0, 2])
    # group_size 1 on channels-last input: the channel-vector kernel (bin-major output), with 3 offset classes
    x6 = x[:, :6].contiguous(memory_format=torch.channels_last)
    gkw = dict(dkw, output_dim=6, group_size=1)
    yield ("deform_psroi_pool group 1 channels-last",
           lambda x, rois, off: deform_psroi_pool(x, rois, off, trans_std=0.1, **gkw), [x6, rois, off], [0, 2])
    yield ("deform_psroi_pool group 1 channels-last no-trans",
           lambda x, rois: deform_psroi_pool(x, rois, None, **gkw), [x6, rois], [0])


def wide_conv_cases(dtype):
    """deform_conv2d with channel runs of whole 16-float vectors and a partial one (40 channels; 2 conv
    groups of 24), offsets putting many samples on the clamped last row or column (two corners one pixel):
    the AVX-512 loops of the backward and the streamed column stores (whole 16-float runs on 64-byte
    lines, C=48; bfloat16 columns: whole 32-value runs, C=64) against the generic ones."""
    gen = torch.Generator().manual_seed(2)
    for c, groups, dgroups in ((40, 1, 1), (48, 2, 1), (48, 1, 3), (64, 1, 1)):
        x = torch.randn(1, c, 9, 11, generator=gen, dtype=dtype)
        w = torch.randn(16, c // groups, 3, 3, generator=gen, dtype=dtype)
        off = torch.randn(1, 2 * dgroups * 9, 9, 11, generator=gen, dtype=dtype) * 3
        fn = lambda x, off, w, groups=groups, dgroups=dgroups: deform_conv2d(
            x, off, w, None, padding=1, groups=groups, deformable_groups=dgroups)
        yield f"deform_conv2d C={c} groups={groups} dgroups={dgroups}", fn, [x, off, w], [0, 1, 2]


def streamed_conv_case():
    """float32 deform_conv2d on NCHW tensors whose layout copies are large enough (4 MB and up) to be
    streamed (csrc/cpu/transpose.h): the input to channels-last and the weight to tap-major (rows of 256,
    each starting a line), the output and the input gradient to NCHW (rows of 4095, each starting
    elsewhere in a line). The weight gradient's copy back, rows of 9 that hold no line, takes plain tiles."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 256, 63, 65, generator=gen)
    w = torch.randn(512, 256, 3, 3, generator=gen) * 0.05
    off = torch.randn(1, 18, 63, 65, generator=gen) * 2
    return lambda x, off, w: deform_conv2d(x, off, w, None, padding=1), [x, off, w], [0, 1, 2]


def all_cases(dtype):
    """(name, fn, inputs, wrt). Where the op samples is given by inputs[1] (deform_conv2d: offsets;
    pools: RoIs) and, for the pools with offsets, inputs[2]."""
    yield ("deform_conv2d", *conv_case(dtype))
    yield from wide_conv_cases(dtype)
    yield from pool_cases(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_and_two_threads_give_the_same_bits(dtype):
    for name, fn, inputs, wrt in all_cases(dtype):
        with threads(1):
            one = forward_backward(fn, inputs, wrt)
        with threads(2):
            two = forward_backward(fn, inputs, wrt)
        for i, (a, b) in enumerate(zip(one, two)):
            what = "forward" if i == 0 else f"gradient {i - 1}"
            assert torch.equal(a, b), f"{name} {dtype} {what}: max |1 thread - 2 threads| = {(a - b).abs().max()}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nms_keeps_the_same_boxes_on_one_and_two_threads(dtype):
    """_nms (the NMS of the proposal layer and of the detections) is one sequential loop today; this
    holds it to the same bar if it is ever split among threads."""
    rng = np.random.default_rng(1)
    boxes, scores = random_boxes(rng, 3000, dtype), rng.random(3000)
    with threads(1):
        one = nms(boxes, scores, 0.7, 300)
    with threads(2):
        two = nms(boxes, scores, 0.7, 300)
    np.testing.assert_array_equal(one, two)


_ISA_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
import dcnviz._C
from test_thread_invariance import forward_backward, pool_cases, streamed_conv_case, wide_conv_cases
torch.save([forward_backward(fn, [t.to(dtype) for t in inputs], wrt)
            for dtype in (torch.float32, torch.float64, torch.bfloat16)
            for cases in (pool_cases, wide_conv_cases) for _, fn, inputs, wrt in cases(torch.float32)]
           + [forward_backward(*streamed_conv_case())], sys.argv[1])
print(dcnviz._C.cpu_kernels())
"""


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512", "AMX"),
                    reason="the CPU has neither AVX2 nor AVX-512: only the baseline loops run here")
def test_hand_picked_and_baseline_loops_give_the_same_bits(tmp_path):
    """Every loop set the CPU can run gives the baseline's bits: DCNVIZ_CPU_ISA unset picks AVX-512 (where
    the CPU has it) or AVX2, =avx2 caps it at AVX2 (so an AVX-512 machine checks the AVX2 loops too),
    =baseline picks the generic loops."""
    results = {}
    for isa in ("auto", "avx2", "baseline"):
        path = tmp_path / f"{isa}.pt"
        env = dict(os.environ, DCNVIZ_CPU_ISA=isa)
        script = _ISA_SCRIPT.format(tests=os.path.dirname(__file__))
        ran = subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True, stdout=subprocess.PIPE,
                             text=True).stdout.strip()
        results.setdefault(ran, torch.load(path))
    assert "baseline" in results and len(results) >= 2, f"loop sets run: {sorted(results)}"
    for ran, cases in results.items():
        for case, case_base in zip(cases, results["baseline"], strict=True):
            for a, b in zip(case, case_base, strict=True):
                assert torch.equal(a, b), f"{ran}: max |{ran} - baseline| = {(a - b).abs().max()}"


def test_cpu_kernels_reports_the_choice():
    """dcnviz._C.cpu_kernels() (printed by `dcnviz bench ops`) names the loops the kernels run: the
    baseline under DCNVIZ_CPU_ISA=baseline, a vector set wherever torch itself found AVX2 or better."""
    def report(isa):
        env = dict(os.environ, DCNVIZ_CPU_ISA=isa)
        code = "import torch, dcnviz._C as c; print(c.cpu_kernels())"  # torch first: it loads libc10
        return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                              text=True).stdout.strip()

    assert report("baseline") == "baseline"
    auto = report("auto")
    assert auto in ("avx512", "avx2", "baseline")
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512", "AMX"):
        assert auto != "baseline"
        assert report("avx2") == "avx2"
