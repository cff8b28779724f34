"""Tests of dcnviz.ops.deform_conv2d (compiled kernels) and its pure-PyTorch reference, against the MXNet
1.9.1 conformance cases (tests/conformance/dconv_*.npz) and against each other."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

from dcnviz.ops import DeformConv2d, deform_conv2d
from dcnviz.ops.reference import deform_conv2d as reference_deform_conv2d
from torch_threads import threads
from test_thread_invariance import streamed_conv_case

CONFORMANCE = sorted((pathlib.Path(__file__).parent / "conformance").glob("dconv_*.npz"))
IMPLS = {"ext": deform_conv2d, "ref": reference_deform_conv2d}
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

# (n, c, h, w, f, (kh, kw), stride, padding, dilation, groups, deformable_groups, bias)
RANDOM_SHAPES = [
    (2, 8, 9, 11, 6, (3, 3), 1, 1, 1, 2, 2, True),
    (3, 6, 5, 4, 4, (3, 3), 1, 1, 1, 1, 3, False),  # tiny maps: several images per chunk
    (1, 12, 14, 10, 6, (2, 3), 2, (1, 0), (1, 2), 3, 4, True),
    (2, 4, 13, 12, 4, (5, 5), 2, 4, 2, 1, 1, False),
    (2, 16, 70, 64, 8, (3, 3), 1, 2, 2, 4, 2, True),  # large maps: one image per chunk
]


def load_case(path: pathlib.Path) -> tuple[dict[str, torch.Tensor], dict]:
    data = np.load(path)
    tensors = {k: torch.from_numpy(data[k]) for k in data.files if k != "meta"}
    return tensors, json.loads(str(data["meta"]))


def forward_backward(fn, x, offset, weight, bias, dy, **kw):
    """Output and gradients {grad_x, grad_offset, grad_weight[, grad_bias]} of ``fn`` for upstream ``dy``."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, offset, weight)]
    if bias is not None:
        leaves.append(bias.detach().clone().requires_grad_())
    y = fn(*leaves[:3], leaves[3] if bias is not None else None, **kw)
    grads = torch.autograd.grad(y, leaves, dy)
    return y.detach(), dict(zip(("grad_x", "grad_offset", "grad_weight", "grad_bias"), grads))


def random_case(n, c, h, w, f, kernel, stride, padding, dilation, groups, dg, bias, *, dtype=torch.float64,
                device="cpu", offset_scale=2.0, seed=0):
    """Random (x, offset, weight, bias, dy) and keyword arguments; offsets ~ N(0, offset_scale) pixels."""
    gen = torch.Generator().manual_seed(seed)
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, pair(stride), pair(padding), pair(dilation)
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    tensors = (torch.randn(n, c, h, w, generator=gen, dtype=dtype),
               torch.randn(n, 2 * dg * kh * kw, ho, wo, generator=gen, dtype=dtype) * offset_scale,
               torch.randn(f, c // groups, kh, kw, generator=gen, dtype=dtype) * 0.3,
               torch.randn(f, generator=gen, dtype=dtype) if bias else None,
               torch.randn(n, f, ho, wo, generator=gen, dtype=dtype))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, deformable_groups=dg)
    return tuple(t if t is None else t.to(device) for t in tensors), kwargs


def smooth_case(dtype=torch.float64, bias=True, seed=0):
    """A small case whose samples stay far (>= 0.3 px) from integer coordinates and the map's borders,
    so that the op is smooth around it and finite differences are meaningful."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 5, 4, dtype=dtype, generator=gen)
    offset = 0.3 + 0.1 * torch.rand(1, 2 * 2 * 9, 3, 2, dtype=dtype, generator=gen)
    weight = torch.randn(2, 2, 3, 3, dtype=dtype, generator=gen)
    b = torch.randn(2, dtype=dtype, generator=gen) if bias else None
    return (x, offset, weight, b), dict(stride=1, padding=0, dilation=1, groups=2, deformable_groups=2)


def op_args(x, offset, weight, bias, stride, padding, dilation, groups, deformable_groups):
    """Positional arguments of torch.ops.dcnviz.deform_conv2d."""
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    return (x, offset, weight, bias, *pair(stride), *pair(padding), *pair(dilation), groups, deformable_groups)


class TestDeformConv2d:
    @pytest.mark.parametrize("impl", sorted(IMPLS))
    @pytest.mark.parametrize("path", CONFORMANCE, ids=lambda p: p.stem)
    def test_conformance(self, path, impl):
        t, meta = load_case(path)
        kw = dict(stride=tuple(meta["stride"]), padding=tuple(meta["padding"]), dilation=tuple(meta["dilation"]),
                  groups=meta["groups"], deformable_groups=meta["deformable_groups"])
        y, grads = forward_backward(IMPLS[impl], t["x"], t["offset"], t["weight"], t.get("bias"), t["dy"], **kw)
        torch.testing.assert_close(y, t["y"], rtol=1e-4, atol=1e-5)
        assert ("grad_bias" in grads) == meta["bias"]
        for name, grad in grads.items():
            torch.testing.assert_close(grad, t[name], rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")

    def test_conformance_cases_present(self):
        assert len(CONFORMANCE) == 24

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_smoke(self, dtype):
        (x, offset, weight, bias), kw = smooth_case(dtype)
        y = deform_conv2d(x, offset, weight, bias, **kw)
        assert y.dtype == dtype and y.shape == (1, 2, 3, 2) and y.is_contiguous()
        assert torch.isfinite(y).all()

    @pytest.mark.parametrize("shape", RANDOM_SHAPES[:4])
    def test_cardinality(self, shape):
        (x, offset, weight, bias, _), kw = random_case(*shape, dtype=torch.float32)
        y = deform_conv2d(x, offset, weight, bias, **kw)
        assert y.shape == (x.shape[0], weight.shape[0], *offset.shape[2:])

    def test_zero_offsets_equal_conv2d(self):
        (x, offset, weight, bias, _), kw = random_case(*RANDOM_SHAPES[2])
        y = deform_conv2d(x, torch.zeros_like(offset), weight, bias, **kw)
        expected = torch.nn.functional.conv2d(x, weight, bias, kw["stride"], kw["padding"], kw["dilation"],
                                              kw["groups"])
        torch.testing.assert_close(y, expected)

    @pytest.mark.parametrize("impl", sorted(IMPLS))
    def test_v1_boundary_rule(self, impl):
        """With a 1x1 kernel of weight 1 at output (0, 0) the output is the sample at the offset itself."""
        image = torch.arange(12, dtype=torch.float64).view(3, 4)  # value = 4*row + col
        # (y, x, value): hard cut outside [0, H) x [0, W); the last row/column is replicated in [H-1, H).
        points = [(-0.01, 1.0, 0.0), (1.0, -0.01, 0.0), (3.0, 1.0, 0.0), (1.0, 4.0, 0.0), (float("nan"), 1.0, 0.0),
                  (2.5, 1.0, 9.0), (1.0, 3.5, 7.0), (2.99, 3.99, 11.0), (0.5, 0.25, 2.25), (1.0, 2.0, 6.0)]
        n = len(points)
        offset = torch.zeros(n, 2, 3, 4, dtype=torch.float64)
        offset[:, 0, 0, 0] = torch.tensor([p[0] for p in points], dtype=torch.float64)
        offset[:, 1, 0, 0] = torch.tensor([p[1] for p in points], dtype=torch.float64)
        x = image.expand(n, 1, 3, 4).contiguous()
        y = IMPLS[impl](x, offset, torch.ones(1, 1, 1, 1, dtype=torch.float64))
        torch.testing.assert_close(y[:, 0, 0, 0], torch.tensor([p[2] for p in points], dtype=torch.float64))

    @pytest.mark.parametrize("impl", sorted(IMPLS))
    def test_v1_offset_gradient_rule(self, impl):
        """One-sided toward +1 at integer coordinates, zero in the clamped band and outside."""
        image = torch.tensor([[0.0, 1.0, 5.0], [2.0, 7.0, 4.0], [3.0, 6.0, 8.0]], dtype=torch.float64)
        points = [(1.0, 1.0), (1.5, 2.5), (2.5, 0.0), (-0.5, 1.0)]
        expected = [(6.0 - 7.0, 4.0 - 7.0), (8.0 - 4.0, 0.0), (0.0, 6.0 - 3.0), (0.0, 0.0)]  # (d/dy, d/dx)
        n = len(points)
        offset = torch.zeros(n, 2, 3, 3, dtype=torch.float64)
        offset[:, :, 0, 0] = torch.tensor(points, dtype=torch.float64)
        offset.requires_grad_()
        y = IMPLS[impl](image.expand(n, 1, 3, 3).contiguous(), offset, torch.ones(1, 1, 1, 1, dtype=torch.float64))
        (grad,) = torch.autograd.grad(y[:, 0, 0, 0].sum(), offset)
        torch.testing.assert_close(grad[:, :, 0, 0], torch.tensor(expected, dtype=torch.float64))

    @pytest.mark.parametrize("shape", RANDOM_SHAPES, ids=lambda s: f"g{s[9]}dg{s[10]}k{s[5][0]}x{s[5][1]}s{s[6]}")
    def test_extension_matches_reference(self, shape):
        (x, offset, weight, bias, dy), kw = random_case(*shape)
        y_ext, g_ext = forward_backward(deform_conv2d, x, offset, weight, bias, dy, **kw)
        y_ref, g_ref = forward_backward(reference_deform_conv2d, x, offset, weight, bias, dy, **kw)
        torch.testing.assert_close(y_ext, y_ref)
        for name in g_ref:
            torch.testing.assert_close(g_ext[name], g_ref[name], msg=lambda m, n=name: f"{n}: {m}")

    def test_noncontiguous(self):
        (x, offset, weight, bias, dy), kw = random_case(*RANDOM_SHAPES[0])
        expected_y, expected_g = forward_backward(deform_conv2d, x, offset, weight, bias, dy, **kw)
        # Same values, other memory layouts: channels-last, a transposed copy and a strided slice.
        x_nc = x.to(memory_format=torch.channels_last)
        offset_nc = offset.transpose(2, 3).contiguous().transpose(2, 3)
        weight_nc = torch.stack([weight, weight], dim=1)[:, 0]
        bias_nc = torch.stack([bias, bias], dim=1)[:, 0]
        dy_nc = dy.transpose(0, 1).contiguous().transpose(0, 1)
        assert not any(t.is_contiguous() for t in (x_nc, offset_nc, weight_nc, bias_nc, dy_nc))
        for fn in IMPLS.values():
            y, g = forward_backward(fn, x_nc, offset_nc, weight_nc, bias_nc, dy_nc, **kw)
            torch.testing.assert_close(y, expected_y)
            for name in expected_g:
                torch.testing.assert_close(g[name], expected_g[name])

    @pytest.mark.parametrize("bias", [True, False])
    @pytest.mark.parametrize("impl", sorted(IMPLS))
    def test_gradcheck(self, impl, bias):
        (x, offset, weight, b), kw = smooth_case(bias=bias)
        inputs = [t.requires_grad_() for t in (x, offset, weight, b) if t is not None]

        def fn(x, offset, weight, *b):
            return IMPLS[impl](x, offset, weight, b[0] if b else None, **kw)

        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)

    def test_gradcheck_stride_dilation_padding(self):
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(1, 2, 7, 6, dtype=torch.float64, generator=gen, requires_grad=True)
        offset = (0.3 + 0.1 * torch.rand(1, 12, 4, 4, dtype=torch.float64, generator=gen)).requires_grad_()
        weight = torch.randn(3, 2, 3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
        fn = lambda x, o, w: deform_conv2d(x, o, w, None, stride=2, padding=(2, 1), dilation=(2, 1))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, offset, weight), eps=1e-6, atol=1e-6, rtol=1e-5)

    @pytest.mark.parametrize("bias", [True, False])
    def test_opcheck(self, bias):
        (x, offset, weight, b), kw = smooth_case(dtype=torch.float32, bias=bias)
        args = op_args(x.requires_grad_(), offset.requires_grad_(), weight.requires_grad_(),
                       b.requires_grad_() if b is not None else None, **kw)
        torch.library.opcheck(torch.ops.dcnviz.deform_conv2d.default, args)

    def test_opcheck_backward_op(self):
        (x, offset, weight, b, dy), kw = random_case(*RANDOM_SHAPES[2], dtype=torch.float32)
        args = op_args(x, offset, weight, b, **kw)
        torch.library.opcheck(torch.ops.dcnviz._deform_conv2d_backward.default, (dy, *args[:3], *args[4:]))

    def test_opcheck_backward_op_channels_last(self):
        """The fake backward gives the real one's strides for channels-last input, weight and offset (the
        input gradient channels-last, the others contiguous), so that compiled graphs allocate what the
        kernel returns."""
        (x, offset, weight, b, dy), kw = random_case(*RANDOM_SHAPES[2], dtype=torch.float32)
        x, offset, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, offset, weight))
        args = op_args(x, offset, weight, b, **kw)
        torch.library.opcheck(torch.ops.dcnviz._deform_conv2d_backward.default, (dy, *args[:3], *args[4:]))

    @pytest.mark.parametrize("shape", RANDOM_SHAPES, ids=lambda s: f"n{s[0]}g{s[9]}dg{s[10]}")
    def test_channels_last_in_channels_last_out(self, shape):
        """On the CPU a channels-last input gives a channels-last output and input gradient (torch's conv2d
        convention: no layout round trip between the convs of a channels-last network); the fake kernels
        agree (opcheck). The output has the NCHW path's very bits (both run the same GEMM into (N*P, F)
        rows; NCHW then transposes them), the input gradient its values up to GEMM rounding (tested
        above)."""
        (x, offset, weight, b, dy), kw = random_case(*shape, dtype=torch.float32)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        y = deform_conv2d(x, offset, weight, b, **kw)
        (gx,) = torch.autograd.grad(y, [x], dy)
        assert not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
        assert not gx.is_contiguous() and gx.is_contiguous(memory_format=torch.channels_last)
        y_nchw = deform_conv2d(x.detach().contiguous(), offset, weight, b, **kw)
        assert y_nchw.is_contiguous()
        assert torch.equal(y, y_nchw)
        torch.library.opcheck(torch.ops.dcnviz.deform_conv2d.default, op_args(x, offset, weight, b, **kw))

    def test_streamed_layout_copies(self):
        """Layout copies large enough to be streamed (csrc/cpu/transpose.h: the NCHW input to channels-last,
        the weight to tap-major, the GEMM's rows to the NCHW output, 4 MB and up) change no bit: the NCHW
        forward equals the channels-last one, which makes none of them. (test_thread_invariance compares
        the same case, gradients included, across instruction sets.)"""
        fn, (x, offset, weight), _ = streamed_conv_case()
        cl = torch.channels_last
        assert torch.equal(fn(x, offset, weight), fn(x.contiguous(memory_format=cl), offset,
                                                     weight.contiguous(memory_format=cl)))

    @pytest.mark.parametrize("shape", RANDOM_SHAPES, ids=lambda s: f"n{s[0]}g{s[9]}dg{s[10]}")
    def test_channels_last_weight(self, shape):
        """A channels-last weight (as the prepared models store it: its memory is the GEMM's tap-major
        matrix, used in place) gives the bits, gradients included, of the same weight contiguous."""
        (x, offset, weight, b, dy), kw = random_case(*shape, dtype=torch.float32)
        w_cl = weight.contiguous(memory_format=torch.channels_last)
        assert not w_cl.is_contiguous() or weight.shape[2:] == (1, 1)
        want, want_g = forward_backward(deform_conv2d, x, offset, weight, b, dy, **kw)
        got, got_g = forward_backward(deform_conv2d, x, offset, w_cl, b, dy, **kw)
        assert torch.equal(got, want)
        for name in want_g:
            assert torch.equal(got_g[name], want_g[name]), name

    @pytest.mark.parametrize("impl", sorted(IMPLS))
    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 1e30, -1e30])
    def test_nonfinite_and_huge_offsets(self, impl, bad):
        (x, offset, weight, bias, dy), kw = random_case(*RANDOM_SHAPES[0], dtype=torch.float32)
        mask = torch.rand(offset.shape, generator=torch.Generator().manual_seed(1)) < 0.2
        y, g = forward_backward(IMPLS[impl], x, offset.masked_fill(mask, bad), weight, bias, dy, **kw)
        # Moving the same samples far outside the map gives the same (zero) contribution.
        y_out, g_out = forward_backward(IMPLS[impl], x, offset.masked_fill(mask, -1e4), weight, bias, dy, **kw)
        assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in g.values())
        torch.testing.assert_close(y, y_out)
        for name in g:
            torch.testing.assert_close(g[name], g_out[name])

    @pytest.mark.parametrize("impl", sorted(IMPLS))
    def test_infinite_input_outside_samples(self, impl):
        """A sample outside the map is exactly 0, even next to an infinite input value."""
        x = torch.zeros(1, 1, 3, 3)
        x[0, 0, 0, 0] = float("inf")
        offset = torch.full((1, 2, 3, 3), -5.0)
        y = IMPLS[impl](x, offset, torch.ones(1, 1, 1, 1))
        assert torch.equal(y, torch.zeros(1, 1, 3, 3))

    @pytest.mark.parametrize("impl", sorted(IMPLS))
    def test_empty_batch(self, impl):
        (x, offset, weight, bias, dy), kw = random_case(*RANDOM_SHAPES[0], dtype=torch.float32)
        x, offset, dy = x[:0], offset[:0], dy[:0]
        y, g = forward_backward(IMPLS[impl], x, offset, weight, bias, dy, **kw)
        assert y.shape == (0, *dy.shape[1:])
        assert g["grad_x"].shape == x.shape and g["grad_offset"].shape == offset.shape
        assert torch.equal(g["grad_weight"], torch.zeros_like(weight))
        assert torch.equal(g["grad_bias"], torch.zeros_like(bias))

    @pytest.mark.parametrize("impl", sorted(IMPLS))
    @pytest.mark.parametrize("c, f", [(0, 4), (4, 0)], ids=["no-input-channels", "no-filters"])
    def test_zero_channels(self, impl, c, f):
        x, offset = torch.randn(2, c, 5, 6), torch.randn(2, 18, 5, 6)
        weight, bias = torch.randn(f, c, 3, 3), torch.randn(f)
        dy = torch.randn(2, f, 5, 6)
        y, g = forward_backward(IMPLS[impl], x, offset, weight, bias, dy, padding=1)
        assert y.shape == (2, f, 5, 6)
        torch.testing.assert_close(y, bias.view(1, f, 1, 1).expand(2, f, 5, 6))
        assert g["grad_x"].shape == x.shape and g["grad_weight"].shape == weight.shape
        assert torch.equal(g["grad_offset"], torch.zeros_like(offset))
        torch.testing.assert_close(g["grad_bias"], dy.sum((0, 2, 3)))

    def test_empty_map_with_padding(self):
        """A 0-row input padded to a non-empty output: every sample is outside, so only the bias remains."""
        x, offset = torch.randn(1, 2, 0, 4), torch.randn(1, 2, 2, 6)
        weight, bias = torch.randn(3, 2, 1, 1), torch.randn(3)
        y, g = forward_backward(deform_conv2d, x, offset, weight, bias, torch.ones(1, 3, 2, 6), padding=1)
        torch.testing.assert_close(y, bias.view(1, 3, 1, 1).expand(1, 3, 2, 6))
        assert g["grad_x"].shape == x.shape and torch.equal(g["grad_weight"], torch.zeros_like(weight))
        assert torch.equal(g["grad_offset"], torch.zeros_like(offset))

    def test_batch_chunks_match_single_images(self):
        (x, offset, weight, bias, dy), kw = random_case(*RANDOM_SHAPES[1])  # tiny maps: one chunk of 3 images
        y, g = forward_backward(deform_conv2d, x, offset, weight, bias, dy, **kw)
        for i in range(x.shape[0]):
            yi, gi = forward_backward(deform_conv2d, x[i:i + 1], offset[i:i + 1], weight, bias, dy[i:i + 1], **kw)
            torch.testing.assert_close(y[i:i + 1], yi)
            torch.testing.assert_close(g["grad_x"][i:i + 1], gi["grad_x"])
            torch.testing.assert_close(g["grad_offset"][i:i + 1], gi["grad_offset"])

    def test_autocast_keeps_float32(self):
        """Inside an autocast region the op (not autocast-registered) still computes in its inputs' dtype."""
        (x, offset, weight, bias, _), kw = random_case(*RANDOM_SHAPES[0], dtype=torch.float32)
        expected = deform_conv2d(x, offset, weight, bias, **kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = deform_conv2d(x, offset, weight, bias, **kw)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, expected)

    def test_inference_mode_then_training(self):
        """Buffers reused across calls must not leak inference-mode state into a later backward."""
        (x, offset, weight, bias, dy), kw = random_case(*RANDOM_SHAPES[4], dtype=torch.float32)
        with torch.inference_mode():
            y_inf = deform_conv2d(x, offset, weight, bias, **kw)
        y, g = forward_backward(deform_conv2d, x, offset, weight, bias, dy, **kw)
        torch.testing.assert_close(y, y_inf)
        assert all(torch.isfinite(t).all() for t in g.values())

    def test_module(self):
        torch.manual_seed(0)
        layer = DeformConv2d(8, 6, 3, padding=2, dilation=2, groups=2, deformable_groups=4, bias=True).double()
        assert layer.weight.shape == (6, 4, 3, 3) and layer.bias.shape == (6,)
        assert "deformable_groups=4" in repr(layer)
        x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
        offset = torch.randn(2, 72, 9, 7, dtype=torch.float64)
        y = layer(x, offset)
        torch.testing.assert_close(y, deform_conv2d(x, offset, layer.weight, layer.bias, padding=2, dilation=2,
                                                    groups=2, deformable_groups=4))
        y.sum().backward()
        assert layer.weight.grad is not None and layer.bias.grad is not None
        assert DeformConv2d(4, 4, (3, 1)).bias is None


def _valid_args():
    (x, offset, weight, bias, _), kw = random_case(*RANDOM_SHAPES[0], dtype=torch.float32)
    return dict(input=x, offset=offset, weight=weight, bias=bias, **kw)


def _with(**changes):
    def make():
        args = _valid_args()
        for key, value in changes.items():
            args[key] = value(args) if callable(value) else value
        return args
    return make


# (id, changes, exception, text the message must contain)
ERRORS = [
    ("input-not-tensor", _with(input=lambda a: a["input"].tolist()), TypeError, "input"),
    ("input-3d", _with(input=lambda a: a["input"][0]), ValueError, "input"),
    ("input-int", _with(input=lambda a: a["input"].long()), TypeError, "input"),
    ("weight-3d", _with(weight=lambda a: a["weight"][0]), ValueError, "weight"),
    ("offset-3d", _with(offset=lambda a: a["offset"][0]), ValueError, "offset"),
    ("offset-channels", _with(offset=lambda a: a["offset"][:, :-2]), ValueError, "offset"),
    ("offset-spatial", _with(offset=lambda a: a["offset"][..., :-1]), ValueError, "offset"),
    ("offset-batch", _with(offset=lambda a: a["offset"][:1]), ValueError, "offset"),
    ("offset-dtype", _with(offset=lambda a: a["offset"].double()), TypeError, "offset"),
    ("offset-device", _with(offset=lambda a: a["offset"].to("meta")), ValueError, "offset"),
    ("weight-dtype", _with(weight=lambda a: a["weight"].double()), TypeError, "weight"),
    ("weight-in-channels", _with(weight=lambda a: a["weight"][:, :3]), ValueError, "weight"),
    ("channels-groups", _with(groups=3), ValueError, "groups"),
    ("filters-groups", _with(weight=lambda a: a["weight"][:5]), ValueError, "groups"),
    ("channels-deformable-groups", _with(deformable_groups=3), ValueError, "deformable_groups"),
    ("groups-zero", _with(groups=0), ValueError, "groups"),
    ("deformable-groups-zero", _with(deformable_groups=0), ValueError, "deformable_groups"),
    ("bias-shape", _with(bias=lambda a: a["bias"][:-1]), ValueError, "bias"),
    ("bias-dtype", _with(bias=lambda a: a["bias"].double()), TypeError, "bias"),
    ("stride-zero", _with(stride=0), ValueError, "stride"),
    ("stride-type", _with(stride="1"), TypeError, "stride"),
    ("padding-negative", _with(padding=-1), ValueError, "padding"),
    ("dilation-triple", _with(dilation=(1, 1, 1)), TypeError, "dilation"),
    ("input-too-small", _with(input=lambda a: a["input"][:, :, :1, :1], padding=0), ValueError, "input"),
]


class TestDeformConv2dExceptions:
    @pytest.mark.parametrize("make, exc, text", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
    def test_exception(self, make, exc, text):
        with pytest.raises(exc, match=text) as info:
            deform_conv2d(**make())
        assert "\n" not in str(info.value)


@requires_cuda
class TestDeformConv2dCUDA:
    @pytest.mark.parametrize("path", CONFORMANCE, ids=lambda p: p.stem)
    def test_conformance_cuda(self, path):
        t, meta = load_case(path)
        kw = dict(stride=tuple(meta["stride"]), padding=tuple(meta["padding"]), dilation=tuple(meta["dilation"]),
                  groups=meta["groups"], deformable_groups=meta["deformable_groups"])
        t = {k: v.cuda() for k, v in t.items()}
        y, grads = forward_backward(deform_conv2d, t["x"], t["offset"], t["weight"], t.get("bias"), t["dy"], **kw)
        assert y.is_cuda
        torch.testing.assert_close(y, t["y"], rtol=1e-4, atol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, t[name], rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("shape", RANDOM_SHAPES)
    def test_cuda_matches_cpu(self, shape, dtype):
        args, kw = random_case(*shape, dtype=dtype)
        y_cpu, g_cpu = forward_backward(deform_conv2d, *args, **kw)
        y_gpu, g_gpu = forward_backward(deform_conv2d, *(t if t is None else t.cuda() for t in args), **kw)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
        torch.testing.assert_close(y_gpu.cpu(), y_cpu, **tol)
        for name in g_cpu:
            torch.testing.assert_close(g_gpu[name].cpu(), g_cpu[name], **tol)

    # Error bound relative to the largest float32 value; inputs are rounded to the low precision first, so
    # only the kernel's arithmetic is measured (float32 accumulation: errors of a few units of the format).
    @pytest.mark.parametrize("dtype, bound", [(torch.float16, 1e-2), (torch.bfloat16, 4e-2)])
    @pytest.mark.parametrize("shape", RANDOM_SHAPES[:3])
    def test_half_types(self, shape, dtype, bound):
        args, kw = random_case(*shape, dtype=torch.float32, device="cuda")
        low = [t if t is None else t.to(dtype) for t in args]
        y, g = forward_backward(deform_conv2d, *low, **kw)
        y32, g32 = forward_backward(deform_conv2d, *(t if t is None else t.float() for t in low), **kw)
        assert y.dtype == dtype and all(v.dtype == dtype for v in g.values())
        for name, got, want in [("y", y, y32)] + [(n, g[n], g32[n]) for n in g32]:
            err = (got.float() - want).abs().max().item()
            assert err <= bound * want.abs().max().item() + 1e-3, f"{name}: max error {err}"

    def test_deterministic_mode_refuses_backward(self):
        """The backward's atomics are reported to torch.use_deterministic_algorithms; the forward is exact."""
        args, kw = random_case(*RANDOM_SHAPES[0], dtype=torch.float32, device="cuda")
        x = args[0].detach().requires_grad_()
        torch.use_deterministic_algorithms(True)
        try:
            y = deform_conv2d(x, *args[1:4], **kw)
            with pytest.raises(RuntimeError, match="deform_conv2d_backward_cuda"):
                y.sum().backward()
        finally:
            torch.use_deterministic_algorithms(False)

    def test_autocast_keeps_float32(self):
        args, kw = random_case(*RANDOM_SHAPES[0], dtype=torch.float32, device="cuda")
        expected = deform_conv2d(*args[:4], **kw)
        with torch.autocast("cuda"):
            y = deform_conv2d(*args[:4], **kw)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, expected)

    def test_device_guard(self):
        if torch.cuda.device_count() < 2:
            pytest.skip("needs two GPUs")
        args, kw = random_case(*RANDOM_SHAPES[0], dtype=torch.float32)
        y_cpu = deform_conv2d(*args[:4], **kw)
        y = deform_conv2d(*(t.to("cuda:1") for t in args[:4]), **kw)
        assert y.device == torch.device("cuda:1")
        torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-4, atol=1e-4)


class TestBenchCommand:
    @pytest.mark.parametrize("channels_last", [False, True])
    def test_bench_ops_json(self, monkeypatch, channels_last):
        from click.testing import CliRunner

        import dcnviz.ops
        from dcnviz import bench
        from dcnviz.cli import main

        monkeypatch.setitem(bench.RES5, "input", (1, 8, 9, 10))
        monkeypatch.setitem(bench.RES5, "weight", (4, 8, 3, 3))
        layouts = set()

        def spy(x, offset, weight, *args, **kwargs):
            layouts.add(tuple(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                              for t in (x, offset, weight)))
            return deform_conv2d(x, offset, weight, *args, **kwargs)

        monkeypatch.setattr(dcnviz.ops, "deform_conv2d", spy)
        flags = ["--channels-last"] if channels_last else []
        with threads(torch.get_num_threads()):  # --threads sets it for the process: restored after
            result = CliRunner().invoke(main, ["bench", "ops", "--op", "conv", "--json", "--repeats", "1",
                                               "--threads", "1", *flags])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        rows = report["rows"]
        assert report["threads"] == 1 and report["repeats"] == 1 and report["channels_last"] == channels_last
        assert layouts == {(channels_last,) * 3}
        assert report["cpu_kernels"] in ("avx512", "avx2", "baseline")
        assert report["freed_memory_kept"] is False  # in-process: only the dcnviz command sets it
        assert [(r["impl"], r["case"]) for r in rows] == [
            ("torch", "res5"), ("dcnviz", "res5 dg=4"), ("torchvision", "res5 dg=4"),
            ("dcnviz", "res5 dg=1"), ("torchvision", "res5 dg=1")]
        assert rows[0]["forward_ratio"] == 1.0
        assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in rows)

    def test_bench_ops_pool_reports_the_no_trans_ratio(self, monkeypatch):
        """`bench ops --op pool` times the head's pooling calls and reports the no-trans pooling against
        psroi_pool of the same input as a ratio of the two rows, in the table and the JSON."""
        from click.testing import CliRunner

        from dcnviz import bench
        from dcnviz.cli import main

        monkeypatch.setitem(bench.RES5, "input", (1, 8, 9, 10))
        monkeypatch.setitem(bench.RES5, "weight", (4, 8, 3, 3))
        monkeypatch.setitem(bench.HEAD, "classes", 3)
        monkeypatch.setitem(bench.HEAD, "feature", (9, 10))
        monkeypatch.setitem(bench.HEAD, "rois", 7)
        with threads(torch.get_num_threads()):
            outs = [CliRunner().invoke(main, ["bench", "ops", "--op", "pool", "--repeats", "1", "--threads", "1",
                                              *flag]) for flag in (["--json"], [])]
        assert all(r.exit_code == 0 for r in outs), [r.output for r in outs]
        report = json.loads(outs[0].output)
        rows = {(r["op"], r["case"]): r for r in report["rows"]}
        no_trans = rows[("deform_psroi_pool", "head cls 7 rois no-trans")]
        base = rows[("psroi_pool", "head cls 7 rois")]
        [ratio] = report["comparisons"]
        assert ratio["name"] == "deform_psroi_pool no-trans / psroi_pool, head cls 7 rois"
        assert ratio["forward_ratio"] == pytest.approx(no_trans["forward_ms"] / base["forward_ms"])
        assert ratio["forward_backward_ratio"] == pytest.approx(
            no_trans["forward_backward_ms"] / base["forward_backward_ms"])
        assert "deform_psroi_pool no-trans / psroi_pool, head cls 7 rois: forward" in outs[1].output

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
    def test_bench_cuda_unavailable(self):
        from click.testing import CliRunner

        from dcnviz.cli import main

        result = CliRunner().invoke(main, ["bench", "ops", "--device", "cuda"])
        assert result.exit_code == 1  # a device that is not there, as in every command
        assert "CUDA is not usable" in result.output and "Traceback" not in result.output
