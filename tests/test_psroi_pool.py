"""psroi_pool: the compiled kernels and the pure-PyTorch reference against MXNet 1.9.1's PSROIPooling
(tests/conformance/psroi_*.npz), and against each other."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dcnviz.ops import PSRoIPool, psroi_pool
from dcnviz.ops import reference
from torch_threads import threads

CASES = sorted((Path(__file__).parent / "conformance").glob("psroi_*.npz"))
IMPLS = {"ext": psroi_pool, "reference": reference.psroi_pool}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def load_case(path):
    """Inputs, MXNet outputs and keyword arguments of one conformance file."""
    data = np.load(path)
    kwargs = json.loads(str(data["meta"]))
    return {k: torch.from_numpy(data[k]) for k in data.files if k != "meta"}, kwargs


def random_case(*, batch=2, output_dim=2, group_size=3, pooled_size=3, height=11, width=13, rois=6,
                spatial_scale=0.5, seed=0, dtype=torch.float64):
    """Random input and RoIs (inside, partly outside, tiny; the first covers the whole map)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, output_dim * group_size ** 2, height, width, generator=g, dtype=dtype)
    img_w, img_h = width / spatial_scale, height / spatial_scale
    x1 = torch.rand(rois, generator=g, dtype=dtype) * img_w * 1.1 - 0.2 * img_w
    y1 = torch.rand(rois, generator=g, dtype=dtype) * img_h * 1.1 - 0.2 * img_h
    x2 = x1 + torch.rand(rois, generator=g, dtype=dtype) * img_w * 0.7
    y2 = y1 + torch.rand(rois, generator=g, dtype=dtype) * img_h * 0.7
    index = torch.randint(0, batch, (rois,), generator=g).to(dtype)
    boxes = torch.stack([index, x1, y1, x2, y2], dim=1)
    boxes[:1, 1:] = torch.tensor([0, 0, img_w - 1, img_h - 1], dtype=dtype)
    kwargs = dict(spatial_scale=spatial_scale, output_dim=output_dim, group_size=group_size, pooled_size=pooled_size)
    return x, boxes, kwargs


def forward_backward(fn, x, rois, kwargs, dy=None, seed=1):
    """Output and input gradient for upstream gradient dy (random if not given)."""
    x = x.detach().clone().requires_grad_()
    y = fn(x, rois, **kwargs)
    if dy is None:
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype).to(y.device)
    y.backward(dy)
    return y.detach(), x.grad


class TestPSRoIPool:
    def test_smoke(self):
        x, rois, kwargs = random_case()
        out = psroi_pool(x, rois, **kwargs)
        assert out.dtype == x.dtype and torch.isfinite(out).all() and out.abs().sum() > 0

    @pytest.mark.parametrize("output_dim,group_size,pooled_size", [(1, 1, 1), (3, 1, 7), (2, 3, 3), (4, 7, 7), (2, 3, 7)])
    def test_cardinality(self, output_dim, group_size, pooled_size):
        x, rois, kwargs = random_case(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size)
        out, gx = forward_backward(psroi_pool, x, rois, kwargs)
        assert out.shape == (rois.shape[0], output_dim, pooled_size, pooled_size) and gx.shape == x.shape

    @pytest.mark.parametrize("impl", IMPLS)
    @pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
    def test_conformance(self, path, impl):
        t, kwargs = load_case(path)
        out, gx = forward_backward(IMPLS[impl], t["x"], t["rois"], kwargs, dy=t["dy"])
        torch.testing.assert_close(out, t["y"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gx, t["grad_x"], rtol=1e-3, atol=1e-4)

    def test_conformance_cases_present(self):
        assert len(CASES) == 12

    def test_gradcheck(self):
        x, rois, kwargs = random_case(batch=1, height=6, width=7, rois=3, spatial_scale=1.0)
        assert torch.autograd.gradcheck(lambda a: psroi_pool(a, rois, **kwargs), (x.requires_grad_(),))

    def test_opcheck(self):
        x, rois, kwargs = random_case(rois=3, height=7, width=8)
        torch.library.opcheck(torch.ops.dcnviz.psroi_pool.default, (x.requires_grad_(), rois, *kwargs.values()))

    def test_opcheck_backward_op_channels_last(self):
        """The fake backward gives the real one's contiguous strides for a channels-last input."""
        x, rois, kwargs = random_case(rois=3, height=7, width=8)
        x = x.contiguous(memory_format=torch.channels_last)
        dy = torch.randn(rois.shape[0], kwargs["output_dim"], kwargs["pooled_size"], kwargs["pooled_size"], dtype=x.dtype)
        torch.library.opcheck(torch.ops.dcnviz._psroi_pool_backward.default, (dy, x, rois, *kwargs.values()))

    def test_noncontiguous(self):
        x, rois, kwargs = random_case()
        x_nc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        rois_nc = torch.stack([rois, rois], dim=2)[..., 1]
        assert not (x_nc.is_contiguous() or rois_nc.is_contiguous())
        for want, got in zip(forward_backward(psroi_pool, x, rois, kwargs),
                             forward_backward(psroi_pool, x_nc, rois_nc, kwargs)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)

    @pytest.mark.parametrize("case", [dict(rois=40, group_size=1), dict(rois=37, output_dim=5)],
                             ids=["shared-channels", "position-sensitive"])
    def test_backward_thread_count_invariant(self, case):
        """The CPU backward splits work so that no two threads write one element: bitwise the same
        output and gradient with 1 and 4 threads (lost updates from a race would change it). 45 channels
        x 37 RoIs also split the forward mid-channel."""
        x, rois, kwargs = random_case(**case)
        results = []
        for n in (1, 4):
            with threads(n):
                results.append(forward_backward(psroi_pool, x, rois, kwargs))
        for one, many in zip(*results):
            assert torch.equal(one, many)

    def test_module(self):
        x, rois, kwargs = random_case()
        module = PSRoIPool(**kwargs)
        torch.testing.assert_close(module(x, rois), psroi_pool(x, rois, **kwargs))
        assert "group_size=3" in repr(module)

    @pytest.mark.parametrize("case", [dict(), dict(group_size=1, output_dim=5, pooled_size=4),
                                      dict(group_size=7, pooled_size=7, output_dim=3, spatial_scale=0.0625),
                                      dict(group_size=2, pooled_size=5, output_dim=2, spatial_scale=2.0)],
                             ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
    def test_matches_reference(self, case):
        x, rois, kwargs = random_case(rois=12, height=17, width=15, seed=len(case), **case)
        for want, got in zip(forward_backward(reference.psroi_pool, x, rois, kwargs),
                             forward_backward(psroi_pool, x, rois, kwargs)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    def test_bin_is_mean_of_whole_pixels(self):
        """A RoI on pixels 2..5 (spatial_scale 1) with one bin averages x[2:6, 2:6]: no interpolation."""
        x = torch.arange(64, dtype=torch.float64).reshape(1, 1, 8, 8)
        out = psroi_pool(x, torch.tensor([[0.0, 2, 2, 5, 5]], dtype=x.dtype), spatial_scale=1.0, output_dim=1,
                         group_size=1, pooled_size=1)
        assert out.item() == x[0, 0, 2:6, 2:6].mean().item()

    def test_zero_rois(self):
        x, rois, kwargs = random_case(rois=0)
        out, gx = forward_backward(psroi_pool, x, rois, kwargs, dy=torch.zeros(0, 2, 3, 3, dtype=x.dtype))
        assert out.shape == (0, 2, 3, 3) and gx.shape == x.shape and not gx.any()

    def test_roi_rounding_half_away_from_zero(self):
        """RoI corners use C round(): 2.5 -> 3 and -1.5 -> -2, where torch.round gives 2 and -2."""
        x, _, kwargs = random_case(spatial_scale=1.0)
        halves = torch.tensor([[0, 2.5, 0.5, 6.5, 8.5], [1, -1.5, 1.5, 4.5, 5.5]], dtype=x.dtype)
        away = torch.tensor([[0, 3, 1, 7, 9], [1, -2, 2, 5, 6]], dtype=x.dtype)
        even = torch.tensor([[0, 2, 0, 6, 8], [1, -2, 2, 4, 6]], dtype=x.dtype)
        got = psroi_pool(x, halves, **kwargs)
        torch.testing.assert_close(got, psroi_pool(x, away, **kwargs), rtol=0, atol=0)
        assert not torch.allclose(got, psroi_pool(x, even, **kwargs))
        torch.testing.assert_close(reference.psroi_pool(x, halves, **kwargs), got)

    def test_huge_rois(self):
        """Finite RoIs whose bin edges overflow to inf/NaN give defined results: edges are clamped to the map
        before they become indices, a NaN edge makes the bin empty."""
        x, rois, kwargs = random_case(dtype=torch.float32, spatial_scale=1.0)
        rois[1, 1:] = torch.tensor([-3e38, -3e38, 3e38, 3e38])
        rois[2, 1:] = torch.tensor([1e30, 1e30, 2e30, 2e30])
        rois[3, 1:] = torch.tensor([-2e30, -2e30, -1e30, -1e30])
        out, gx = forward_backward(psroi_pool, x, rois, kwargs)
        assert torch.isfinite(out).all() and torch.isfinite(gx).all()
        assert (out[2:4] == 0).all()
        torch.testing.assert_close(out, reference.psroi_pool(x, rois, **kwargs))

    def test_unusable_rois_in_kernel(self):
        """The kernel itself (reached without the wrapper's checks, e.g. under torch.compile) turns a RoI
        with a bad batch index or a non-finite corner into zeros and no gradient."""
        x, rois, kwargs = random_case(rois=5)
        bad = rois.clone()
        bad[1, 0], bad[2, 0], bad[3, 2], bad[4, 0] = 7, float("nan"), -float("inf"), -1
        x.requires_grad_()
        out = torch.ops.dcnviz.psroi_pool(x, bad, *kwargs.values())
        out.backward(torch.ones_like(out))
        assert (out[1:] == 0).all()
        want = forward_backward(psroi_pool, x, rois[:1], kwargs, dy=torch.ones_like(out[:1]))
        torch.testing.assert_close(out[:1], want[0])
        torch.testing.assert_close(x.grad, want[1])

    @pytest.mark.parametrize("change,error,match", [
        (lambda a: dict(a, input=a["input"][0]), ValueError, "input must have shape"),
        (lambda a: dict(a, input=a["input"][:, :5]), ValueError, "input must have output_dim"),
        (lambda a: dict(a, input=a["input"].int()), TypeError, "input must be one of"),
        (lambda a: dict(a, input=[1.0]), TypeError, "input must be a torch.Tensor"),
        (lambda a: dict(a, rois=a["rois"][:, :4]), ValueError, r"rois must have shape \(R, 5\)"),
        (lambda a: dict(a, rois=a["rois"][None]), ValueError, r"rois must have shape \(R, 5\)"),
        (lambda a: dict(a, rois=a["rois"].float()), TypeError, "rois has dtype"),
        (lambda a: dict(a, rois=a["rois"].to("meta")), ValueError, "rois is on meta"),
        (lambda a: dict(a, rois=a["rois"].index_fill(1, torch.tensor([0]), 2.0)), ValueError, r"rois\[:, 0\]"),
        (lambda a: dict(a, rois=a["rois"].index_fill(1, torch.tensor([0]), -1.0)), ValueError, r"rois\[:, 0\]"),
        (lambda a: dict(a, rois=a["rois"].index_fill(1, torch.tensor([4]), float("inf"))), ValueError, "rois must be finite"),
        (lambda a: dict(a, output_dim=0), ValueError, "output_dim must be a positive int"),
        (lambda a: dict(a, pooled_size=2.0), ValueError, "pooled_size must be a positive int"),
    ])
    def test_exception(self, change, error, match):
        x, rois, kwargs = random_case(batch=2)
        with pytest.raises(error, match=match):
            psroi_pool(**change(dict(input=x, rois=rois, **kwargs)))


@cuda
class TestPSRoIPoolCUDA:
    @pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
    def test_conformance(self, path):
        t, kwargs = load_case(path)
        cpu = forward_backward(psroi_pool, t["x"], t["rois"], kwargs, dy=t["dy"])
        gpu = forward_backward(psroi_pool, t["x"].cuda(), t["rois"].cuda(), kwargs, dy=t["dy"].cuda())
        torch.testing.assert_close(gpu[0].cpu(), t["y"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gpu[1].cpu(), t["grad_x"], rtol=1e-3, atol=1e-4)
        for want, got in zip(cpu, gpu):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)

    def test_deterministic_mode_refuses_backward(self):
        """The backward's atomics are reported to torch.use_deterministic_algorithms."""
        x, rois, kwargs = random_case(rois=4)
        x = x.cuda().requires_grad_()
        torch.use_deterministic_algorithms(True)
        try:
            y = psroi_pool(x, rois.cuda(), **kwargs)
            with pytest.raises(RuntimeError, match="psroi_pool_backward_cuda"):
                y.sum().backward()
        finally:
            torch.use_deterministic_algorithms(False)

    def test_matches_cpu(self):
        x, rois, kwargs = random_case(rois=16)
        cpu = forward_backward(psroi_pool, x, rois, kwargs)
        dy = torch.randn(cpu[0].shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
        gpu = forward_backward(psroi_pool, x.cuda(), rois.cuda(), kwargs, dy=dy.cuda())
        for want, got in zip(cpu, gpu):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
    def test_low_precision(self, dtype, tol):
        """Half inputs, float32 accumulation: within a few input ulps of float64 on the rounded inputs."""
        x, rois, kwargs = random_case(rois=8, spatial_scale=1.0)
        x, rois = x.to(dtype), rois.to(dtype)
        dy = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(1)).to(dtype)
        want = forward_backward(psroi_pool, x.double(), rois.double(), kwargs, dy=dy.double())
        got = forward_backward(psroi_pool, x.cuda(), rois.cuda(), kwargs, dy=dy.cuda())
        for w, g in zip(want, got):
            assert g.dtype == dtype
            torch.testing.assert_close(g.cpu().double(), w, rtol=tol, atol=tol * max(1.0, w.abs().max().item()))

    def test_unusable_rois(self):
        x, rois, kwargs = random_case()
        rois[1, 0], rois[2, 4] = 9, float("nan")
        out = torch.ops.dcnviz.psroi_pool(x.cuda(), rois.cuda(), *kwargs.values())
        assert (out[1:3] == 0).all()
