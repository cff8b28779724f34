"""bfloat16 and float16 on the CPU: every op computes in float32 on the rounded inputs and rounds each
result once to the input's type (csrc/cpu/reduced_precision.h), forward and backward.

Two statements per op and type: (1) exactly the float32 result on the same (rounded) inputs, rounded
once: 0.5 unit in the last place of the type, nothing accumulated in it; (2) against float32 on
unrounded values, the deviation a user sees, within 2**-6 (bfloat16: 8-bit significand) or 2**-9
(float16) of the largest value, i.e. a couple of units of the type for sums of a few dozen terms. The
sampling positions (offsets, RoIs) are rounded in both runs: a DCNv1 sample jumps from 0 to the edge
pixel where it enters the map, so a position rounded across that edge changes a value by a whole
pixel, which is the semantics, not an accumulation error.
"""
import pytest
import torch

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
