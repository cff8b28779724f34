"""deform_psroi_pool: the compiled kernels and the pure-PyTorch reference against MXNet 1.9.1's
DeformablePSROIPooling (tests/conformance/dpsroi_*.npz), and against each other."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dcnviz.ops import DeformPSRoIPool, deform_psroi_pool
from dcnviz.ops import reference
from torch_threads import threads as thread_count

CASES = sorted((Path(__file__).parent / "conformance").glob("dpsroi_*.npz"))
IMPLS = {"ext": deform_psroi_pool, "reference": reference.deform_psroi_pool}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def load_case(path):
    """Inputs, MXNet outputs and keyword arguments of one conformance file (trans is our offset)."""
    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    kwargs = {k: meta[k] for k in ("spatial_scale", "output_dim", "group_size", "pooled_size", "part_size",
                                   "sample_per_part", "trans_std")}
    tensors = {k: torch.from_numpy(data[k]) for k in data.files if k != "meta"}
    if meta["no_trans"]:
        assert "trans" not in tensors
    return tensors, kwargs


def random_case(*, batch=2, output_dim=2, group_size=3, pooled_size=3, part_size=None, num_classes=1, height=11,
                width=13, rois=5, spatial_scale=0.5, sample_per_part=2, trans_std=0.3, offset=True, seed=0,
                dtype=torch.float64):
    """Random input, RoIs (inside, partly outside, tiny, whole map) and offsets of about +-1 RoI size."""
    g = torch.Generator().manual_seed(seed)
    part_size = pooled_size if part_size is None else part_size
    x = torch.randn(batch, output_dim * group_size ** 2, height, width, generator=g, dtype=dtype)
    img_w, img_h = width / spatial_scale, height / spatial_scale
    x1 = torch.rand(rois, generator=g, dtype=dtype) * img_w * 1.1 - 0.2 * img_w
    y1 = torch.rand(rois, generator=g, dtype=dtype) * img_h * 1.1 - 0.2 * img_h
    x2 = x1 + torch.rand(rois, generator=g, dtype=dtype) * img_w * 0.7
    y2 = y1 + torch.rand(rois, generator=g, dtype=dtype) * img_h * 0.7
    index = torch.randint(0, batch, (rois,), generator=g).to(dtype)
    boxes = torch.stack([index, x1, y1, x2, y2], dim=1)
    boxes[:1, 1:] = torch.tensor([0, 0, img_w - 1, img_h - 1], dtype=dtype)
    off = torch.randn(rois, 2 * num_classes, part_size, part_size, generator=g, dtype=dtype) if offset else None
    kwargs = dict(spatial_scale=spatial_scale, output_dim=output_dim, group_size=group_size,
                  pooled_size=pooled_size, part_size=part_size, sample_per_part=sample_per_part,
                  trans_std=trans_std)
    return x, boxes, off, kwargs


def forward_backward(fn, x, rois, offset, kwargs, dy=None, seed=1):
    """Output and (grad_input, grad_offset) for upstream gradient dy (random if not given)."""
    x = x.detach().clone().requires_grad_()
    offset = None if offset is None else offset.detach().clone().requires_grad_()
    y = fn(x, rois, offset, **kwargs)
    if dy is None:
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype).to(y.device)
    y.backward(dy)
    return y.detach(), x.grad, None if offset is None else offset.grad


def grid_case(*, output_dim=2, group_size=3, pooled_size=3, part_size=None, num_classes=1, samples=2, seed=0):
    """Small float64 case whose samples sit at least 0.2 px from integers and inside the map, so the
    op is smooth in input and offset there: RoI starts fall on k - 0.5 and sub-bins are 1 px wide,
    so samples lie at half-integers, moved by less than 0.3 px (|offset| < 0.5, trans_std*roi = 0.6)."""
    g = torch.Generator().manual_seed(seed)
    part_size = pooled_size if part_size is None else part_size
    span = pooled_size * samples  # RoI size in pixels (spatial_scale 1): sub-bins of exactly 1 px
    size = span + 6
    x = torch.randn(1, output_dim * group_size ** 2, size, size, generator=g, dtype=torch.float64)
    rois = torch.tensor([[0, 3, 3, 3 + span - 1, 3 + span - 1], [0, 2, 4, 2 + span - 1, 4 + span - 1]],
                        dtype=torch.float64)
    offset = (torch.rand(2, 2 * num_classes, part_size, part_size, generator=g, dtype=torch.float64) - 0.5) * 0.9
    kwargs = dict(spatial_scale=1.0, output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                  part_size=part_size, sample_per_part=samples, trans_std=0.1 * 6 / span)
    return x, rois, offset, kwargs


class TestDeformPSRoIPool:
    def test_smoke(self):
        x, rois, offset, kwargs = random_case()
        out = deform_psroi_pool(x, rois, offset, **kwargs)
        assert out.dtype == x.dtype and torch.isfinite(out).all() and out.abs().sum() > 0

    @pytest.mark.parametrize("output_dim,group_size,pooled_size,part_size,num_classes", [
        (1, 1, 1, 1, 1), (3, 1, 7, 7, 3), (2, 3, 3, 1, 1), (4, 7, 7, 7, 2), (2, 3, 7, 3, 1)])
    @pytest.mark.parametrize("with_offset", [True, False])
    def test_cardinality(self, output_dim, group_size, pooled_size, part_size, num_classes, with_offset):
        x, rois, offset, kwargs = random_case(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                                              part_size=part_size, num_classes=num_classes, offset=with_offset)
        out, gx, go = forward_backward(deform_psroi_pool, x, rois, offset, kwargs)
        assert out.shape == (rois.shape[0], output_dim, pooled_size, pooled_size)
        assert gx.shape == x.shape
        assert (go is None) == (offset is None) and (go is None or go.shape == offset.shape)

    @pytest.mark.parametrize("impl", IMPLS)
    @pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
    def test_conformance(self, path, impl):
        t, kwargs = load_case(path)
        out, gx, go = forward_backward(IMPLS[impl], t["x"], t["rois"], t.get("trans"), kwargs, dy=t["dy"])
        torch.testing.assert_close(out, t["y"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gx, t["grad_x"], rtol=1e-3, atol=1e-4)
        if "trans" in t:
            torch.testing.assert_close(go, t["grad_trans"], rtol=1e-3, atol=1e-4)

    def test_conformance_cases_present(self):
        assert len(CASES) == 24

    @pytest.mark.parametrize("with_offset", [True, False])
    def test_gradcheck(self, with_offset):
        x, rois, offset, kwargs = grid_case(num_classes=2, output_dim=2)
        inputs = (x.requires_grad_(), rois, offset.requires_grad_() if with_offset else None)
        assert torch.autograd.gradcheck(lambda a, r, o: deform_psroi_pool(a, r, o, **kwargs), inputs)

    def test_gradcheck_parts(self):
        """group_size 1 (the paper's deformable RoI pooling) with a coarser offset grid than the bins."""
        x, rois, offset, kwargs = grid_case(output_dim=3, group_size=1, pooled_size=3, part_size=2, samples=1)
        inputs = (x.requires_grad_(), rois, offset.requires_grad_())
        assert torch.autograd.gradcheck(lambda a, r, o: deform_psroi_pool(a, r, o, **kwargs), inputs)

    @pytest.mark.parametrize("with_offset", [True, False])
    def test_opcheck(self, with_offset):
        x, rois, offset, kwargs = random_case(rois=3, height=7, width=8)
        args = (x.requires_grad_(), rois, offset.requires_grad_() if with_offset else None, kwargs["spatial_scale"],
                kwargs["output_dim"], kwargs["group_size"], kwargs["pooled_size"], kwargs["part_size"],
                kwargs["sample_per_part"], kwargs["trans_std"])
        torch.library.opcheck(torch.ops.dcnviz.deform_psroi_pool.default, args)

    def test_opcheck_backward_op_channels_last(self):
        """The fake backward gives the real one's contiguous strides for a channels-last input."""
        x, rois, offset, kwargs = random_case(rois=3, height=7, width=8)
        x = x.contiguous(memory_format=torch.channels_last)
        offset = offset.contiguous(memory_format=torch.channels_last)
        dy = torch.randn(rois.shape[0], kwargs["output_dim"], kwargs["pooled_size"], kwargs["pooled_size"], dtype=x.dtype)
        torch.library.opcheck(torch.ops.dcnviz._deform_psroi_pool_backward.default,
                              (dy, x, rois, offset, *kwargs.values()))

    @pytest.mark.parametrize("num_classes", [0, 1, 3])
    def test_group_one_channels_last_is_bitwise_the_same(self, num_classes):
        """group_size 1 on a channels-last input runs a kernel of its own (a vector loop over each sample's
        channels) whose output is bin-major in memory: the same bits as the contiguous input's, also for
        inf/NaN inputs, a RoI off the map and more RoIs than one lane block; the fake kernel gives its strides."""
        for dtype in (torch.float32, torch.float64):
            x, rois, offset, kwargs = random_case(batch=2, output_dim=6, group_size=1, pooled_size=3, rois=37,
                                                  num_classes=max(num_classes, 1), offset=num_classes > 0, dtype=dtype)
            x[0, 2, 3, 4], x[1, 0, 5, 6] = float("inf"), float("nan")
            rois[1, 1:] = torch.tensor([-90.0, -90.0, -70.0, -70.0], dtype=dtype)
            want = deform_psroi_pool(x, rois, offset, **kwargs)
            got = deform_psroi_pool(x.contiguous(memory_format=torch.channels_last), rois, offset, **kwargs)
            assert got.shape == want.shape and got.permute(2, 3, 0, 1).is_contiguous()
            assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())
            assert got[1].abs().max() == 0 and want.isnan().any()
        x = x.nan_to_num(posinf=1.0).contiguous(memory_format=torch.channels_last)  # opcheck compares with NaN != NaN
        args = (x.requires_grad_(), rois, None if offset is None else offset.requires_grad_(), *kwargs.values())
        torch.library.opcheck(torch.ops.dcnviz.deform_psroi_pool.default, args)

    def test_group_one_channels_last_beyond_the_window(self):
        """Large bins (no 8x8 window holds their samples) and more channels than one chunk of the
        channels-last kernel's loop (64): the same bits as the contiguous input's, and the reference's
        values."""
        x, rois, offset, kwargs = random_case(batch=1, output_dim=70, group_size=1, pooled_size=2, height=30,
                                              width=36, rois=20, spatial_scale=1.0, sample_per_part=4)
        want = deform_psroi_pool(x, rois, offset, **kwargs)
        got = deform_psroi_pool(x.contiguous(memory_format=torch.channels_last), rois, offset, **kwargs)
        assert torch.equal(got, want)
        torch.testing.assert_close(got, reference.deform_psroi_pool(x, rois, offset, **kwargs), rtol=1e-10, atol=1e-12)

    def test_group_one_channels_last_whole_pixel_samples(self):
        """Samples at whole pixels (fraction 0) can leave a column between them that no sample touches,
        which the channels-last kernel's register loop does not take (its gapless windows do): both kinds,
        with whole vectors of channels and a tail, and an inf at a pixel inside a window that no sample
        touches. The same bits as the contiguous input's, and the reference's values."""
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(1, 37, 12, 20, generator=torch.Generator().manual_seed(3), dtype=dtype)
            x[0, :, 1, 1] = float("inf")
            # spatial_scale 0.5: a RoI from x1 = 1 starts at 0, and x2 = 16 makes it 8 px wide, so the 4
            # samples of its one bin sit at 0, 2, 4, 6 (columns and rows 1, 3, 5 untouched); from x1 = 5
            # the same at 2, 4, 6, 8; 6 px wide (x2 = 12), at 0, 1.5, 3, 4.5: no gap; 5 px, at 1.25 steps
            rois = torch.tensor([[0, 1, 1, 16, 16], [0, 1, 1, 12, 16], [0, 5, 1, 20, 9], [0, 3, 6, 12, 15]],
                                dtype=dtype)
            kwargs = dict(spatial_scale=0.5, output_dim=37, group_size=1, pooled_size=1, part_size=1,
                          sample_per_part=4, trans_std=0.0)
            want = deform_psroi_pool(x, rois, None, **kwargs)
            got = deform_psroi_pool(x.contiguous(memory_format=torch.channels_last), rois, None, **kwargs)
            assert got.isfinite().all() and torch.equal(got, want)
            torch.testing.assert_close(got, reference.deform_psroi_pool(x, rois, None, **kwargs),
                                       **({"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {}))

    def test_noncontiguous(self):
        x, rois, offset, kwargs = random_case(num_classes=2, output_dim=4)
        x_nc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        rois_nc = torch.stack([rois, rois], dim=2)[..., 1]
        offset_nc = offset.transpose(2, 3).contiguous().transpose(2, 3)
        assert not (x_nc.is_contiguous() or rois_nc.is_contiguous() or offset_nc.is_contiguous())
        for want, got in zip(forward_backward(deform_psroi_pool, x, rois, offset, kwargs),
                             forward_backward(deform_psroi_pool, x_nc, rois_nc, offset_nc, kwargs)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)

    @pytest.mark.parametrize("case", [
        dict(rois=40, num_classes=2, output_dim=4, group_size=1, part_size=2),
        dict(rois=37, num_classes=5, output_dim=5, group_size=3, pooled_size=3)],
        ids=["shared-channels", "position-sensitive"])
    def test_backward_thread_count_invariant(self, case):
        """The CPU backward splits work so that no two threads write one element, and sums every element's
        terms in a fixed order: bitwise the same output and gradients with 1 and 4 threads (lost updates
        from a race would change them). 45 channels x 37 RoIs also split the forward mid-channel."""
        x, rois, offset, kwargs = random_case(**case)
        results = []
        for n in (1, 4):
            with thread_count(n):
                results.append(forward_backward(deform_psroi_pool, x, rois, offset, kwargs))
        for one, many in zip(*results):
            assert torch.equal(one, many)

    def test_module(self):
        x, rois, offset, kwargs = random_case()
        module = DeformPSRoIPool(**kwargs)
        torch.testing.assert_close(module(x, rois, offset), deform_psroi_pool(x, rois, offset, **kwargs))
        assert "trans_std=0.3" in repr(module) and "sample_per_part=2" in repr(module)

    @pytest.mark.parametrize("case", [
        dict(num_classes=1), dict(num_classes=3, output_dim=6), dict(num_classes=2, output_dim=6, part_size=2),
        dict(group_size=1, output_dim=3, pooled_size=3, part_size=3), dict(group_size=7, pooled_size=7, output_dim=1),
        dict(group_size=3, pooled_size=7, part_size=3, sample_per_part=4), dict(offset=False, output_dim=3),
        dict(group_size=2, pooled_size=3, part_size=4, num_classes=2, output_dim=4, sample_per_part=1)],
        ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
    def test_matches_reference(self, case):
        x, rois, offset, kwargs = random_case(rois=8, height=17, width=15, seed=len(case), **case)
        for want, got in zip(forward_backward(reference.deform_psroi_pool, x, rois, offset, kwargs),
                             forward_backward(deform_psroi_pool, x, rois, offset, kwargs)):
            if want is not None:
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("threads", [1, 2])
    def test_class_offsets_in_runs(self, threads):
        """Enough RoIs that the CPU kernels copy the class offsets a run of classes at a time (ClassOffsets
        holds ~0.5 MB: 3 of the 8 classes here, so runs of 3, 3 and 2), and with 2 threads the second
        starts within a run: every class must move its own bins, forward and backward."""
        x, rois, offset, kwargs = random_case(output_dim=8, group_size=7, pooled_size=7, num_classes=8, rois=176,
                                              height=20, width=24, sample_per_part=2, trans_std=0.1)
        run = (512 << 10) // (2 * 7 * 7 * 176 * x.element_size())
        assert run == 3  # the case covers what it says (rois is a multiple of 16)
        with thread_count(threads):
            got = forward_backward(deform_psroi_pool, x, rois, offset, kwargs)
        for want, g in zip(forward_backward(reference.deform_psroi_pool, x, rois, offset, kwargs), got):
            torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("threads", [1, 2])
    def test_class_offsets_float32(self, threads):
        """float32 class offsets, which AVX-512 copies 16 RoIs by 16 values at a time (gather_lanes): full
        blocks of 16 RoIs and a partial one (37 RoIs), and runs of 3 * 2 * 7 * 7 = 294 values (not a
        multiple of 16). Against the float64 reference: a value taken from the wrong RoI or cell moves
        its bin by a pixel or more."""
        x, rois, offset, kwargs = random_case(output_dim=3, group_size=7, pooled_size=7, num_classes=3, rois=37,
                                              height=20, width=24, sample_per_part=2, trans_std=0.1)
        x, rois, offset = x.float(), rois.float(), offset.float()
        dy = torch.randn(37, 3, 7, 7, generator=torch.Generator().manual_seed(1))
        with thread_count(threads):
            got = forward_backward(deform_psroi_pool, x, rois, offset, kwargs, dy=dy)
        want = forward_backward(reference.deform_psroi_pool, x.double(), rois.double(), offset.double(), kwargs,
                                dy=dy.double())
        for w, g in zip(want, got):
            torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=2e-5)  # float32 rounding: ~1e-5 here

    @pytest.mark.parametrize("case", [
        dict(height=40, width=44, pooled_size=1, group_size=1, sample_per_part=4),  # 40-px bins: no window fits
        dict(height=9, width=5, sample_per_part=4),  # a map narrower than the window
        dict(height=30, width=30, pooled_size=2, group_size=2, sample_per_part=3, rois=12),  # both kinds
        # more samples per axis than the window code keeps between its passes (8), in bins that fit
        dict(height=30, width=30, pooled_size=4, group_size=4, sample_per_part=11, rois=20)],
        ids=["large-bins", "narrow-map", "mixed", "many-samples"])
    def test_backward_beyond_the_window(self, case):
        """The CPU kernels sum a bin and spread its gradient on a fixed 8x8 window where its samples fit and
        with a general path elsewhere (large bins, maps under 8 pixels wide): both match the reference."""
        x, rois, offset, kwargs = random_case(spatial_scale=1.0, trans_std=0.1, **case)
        for want, got in zip(forward_backward(reference.deform_psroi_pool, x, rois, offset, kwargs),
                             forward_backward(deform_psroi_pool, x, rois, offset, kwargs)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    def test_backward_nonfinite_grad_touches_only_sampled_pixels(self):
        """An infinite upstream gradient reaches exactly the pixels a bin samples (as in a sample-by-sample
        scatter), not the rest of the window around them. (Where the reference adds inf * 0 for a corner
        of weight 0, giving NaN, the merged weight gives inf: both not finite.)"""
        x, rois, offset, kwargs = random_case(height=20, width=24, rois=3, spatial_scale=1.0, pooled_size=2,
                                              group_size=2, part_size=2, sample_per_part=2, offset=False)
        dy = torch.zeros(3, 2, 2, 2, dtype=x.dtype)
        dy[1, 0, 1, 1] = float("inf")
        _, gx, _ = forward_backward(deform_psroi_pool, x, rois, None, kwargs, dy=dy)
        _, want, _ = forward_backward(reference.deform_psroi_pool, x, rois, None, kwargs, dy=dy)
        assert torch.equal(torch.isfinite(gx), torch.isfinite(want))
        assert not torch.isfinite(gx).all()

    def test_group_size_one_is_deformable_roi_pooling(self):
        """With one group every bin of output channel c reads input channel c."""
        x, rois, offset, kwargs = random_case(output_dim=3, group_size=1, pooled_size=5, part_size=5)
        out = deform_psroi_pool(x, rois, offset, **kwargs)
        for c in range(3):
            alone = deform_psroi_pool(x[:, c:c + 1], rois, offset, **dict(kwargs, output_dim=1))
            torch.testing.assert_close(out[:, c:c + 1], alone, rtol=0, atol=0)

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e30, -1e30])
    def test_nonfinite_and_huge_offsets(self, bad):
        x, rois, offset, kwargs = random_case()
        offset[1] = bad
        out, gx, go = forward_backward(deform_psroi_pool, x, rois, offset, kwargs)
        assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(go).all()
        assert (out[1] == 0).all() and (go[1] == 0).all()  # every sample of RoI 1 is off the map: skipped
        clean = offset.clone()
        clean[1] = 0
        want = forward_backward(deform_psroi_pool, x, rois[[0, 2, 3, 4]], clean[[0, 2, 3, 4]], kwargs)
        torch.testing.assert_close(out[[0, 2, 3, 4]], want[0])
        for got, ref in zip((out, gx, go), forward_backward(reference.deform_psroi_pool, x, rois, offset, kwargs)):
            torch.testing.assert_close(got, ref)

    def test_huge_rois(self):
        """Finite RoIs so large that the bin size overflows to inf: every sample is NaN or off the map,
        so it is skipped and the bins are 0."""
        x, rois, offset, kwargs = random_case(dtype=torch.float32, spatial_scale=1.0)
        rois[1, 1:] = torch.tensor([-3e38, -3e38, 3e38, 3e38])
        rois[2, 1:] = torch.tensor([1e30, 1e30, 2e30, 2e30])
        out, gx, go = forward_backward(deform_psroi_pool, x, rois, offset, kwargs)
        assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(go).all()
        assert (out[1:3] == 0).all() and (go[1:3] == 0).all()
        torch.testing.assert_close(out, reference.deform_psroi_pool(x, rois, offset, **kwargs))

    @pytest.mark.parametrize("with_offset", [True, False])
    def test_zero_rois(self, with_offset):
        x, rois, offset, kwargs = random_case(rois=0, offset=with_offset)
        out, gx, go = forward_backward(deform_psroi_pool, x, rois, offset, kwargs, dy=torch.zeros(0, 2, 3, 3))
        assert out.shape == (0, 2, 3, 3) and gx.shape == x.shape and not gx.any()
        if with_offset:
            assert go.shape == (0, 2, 3, 3)
        gi, go = torch.ops.dcnviz._deform_psroi_pool_backward(
            torch.zeros(0, 2, 3, 3, dtype=x.dtype), x, rois, offset, *kwargs.values())
        assert gi.shape == x.shape and not gi.any() and go.shape == ((0, 2, 3, 3) if with_offset else (0,))

    def test_no_offset_backward_returns_empty_offset_grad(self):
        x, rois, _, kwargs = random_case()
        grad = torch.ones(rois.shape[0], 2, 3, 3, dtype=x.dtype)
        gi, go = torch.ops.dcnviz._deform_psroi_pool_backward(grad, x, rois, None, *kwargs.values())
        assert gi.shape == x.shape and go.shape == (0,)

    def test_roi_rounding_half_away_from_zero(self):
        """RoI corners use C round(): 2.5 -> 3 and -1.5 -> -2, where torch.round gives 2 and -2."""
        x, _, _, kwargs = random_case(offset=False, spatial_scale=1.0)
        halves = torch.tensor([[0, 2.5, 0.5, 6.5, 8.5], [1, -1.5, 1.5, 4.5, 5.5]], dtype=x.dtype)
        away = torch.tensor([[0, 3, 1, 7, 9], [1, -2, 2, 5, 6]], dtype=x.dtype)
        even = torch.tensor([[0, 2, 0, 6, 8], [1, -2, 2, 4, 6]], dtype=x.dtype)
        got = deform_psroi_pool(x, halves, **kwargs)
        torch.testing.assert_close(got, deform_psroi_pool(x, away, **kwargs), rtol=0, atol=0)
        assert not torch.allclose(got, deform_psroi_pool(x, even, **kwargs))
        torch.testing.assert_close(reference.deform_psroi_pool(x, halves, **kwargs), got)

    def test_unusable_rois_in_kernel(self):
        """The kernel itself (reached without the wrapper's checks, e.g. under torch.compile) turns a RoI
        with a bad batch index or a non-finite corner into zeros and no gradient."""
        x, rois, offset, kwargs = random_case()
        bad = rois.clone()
        bad[1, 0], bad[2, 0], bad[3, 3] = 7, float("nan"), float("inf")
        bad[4, 0] = -1
        x.requires_grad_(), offset.requires_grad_()
        out = torch.ops.dcnviz.deform_psroi_pool(x, bad, offset, *kwargs.values())
        out.backward(torch.ones_like(out))
        assert (out[1:] == 0).all() and (offset.grad[1:] == 0).all()
        want = forward_backward(deform_psroi_pool, x, rois[:1], offset[:1], kwargs, dy=torch.ones_like(out[:1]))
        torch.testing.assert_close(out[:1], want[0])
        torch.testing.assert_close(x.grad, want[1])
        torch.testing.assert_close(offset.grad[:1], want[2])

    @pytest.mark.parametrize("change,error,match", [
        (lambda a: dict(a, input=a["input"][0]), ValueError, "input must have shape"),
        (lambda a: dict(a, input=a["input"][:, :5]), ValueError, "input must have output_dim"),
        (lambda a: dict(a, input=a["input"].long()), TypeError, "input must be one of"),
        (lambda a: dict(a, input=a["input"].numpy()), TypeError, "input must be a torch.Tensor"),
        (lambda a: dict(a, rois=a["rois"][:, :4]), ValueError, r"rois must have shape \(R, 5\)"),
        (lambda a: dict(a, rois=a["rois"][0]), ValueError, r"rois must have shape \(R, 5\)"),
        (lambda a: dict(a, rois=a["rois"].float()), TypeError, "rois has dtype"),
        (lambda a: dict(a, rois=a["rois"].to("meta")), ValueError, "rois is on meta"),
        (lambda a: dict(a, rois=a["rois"].index_fill(1, torch.tensor([0]), 2.0)), ValueError, r"rois\[:, 0\]"),
        (lambda a: dict(a, rois=a["rois"].index_fill(1, torch.tensor([0]), -1.0)), ValueError, r"rois\[:, 0\]"),
        (lambda a: dict(a, rois=a["rois"].index_fill(1, torch.tensor([0]), 0.5)), ValueError, r"rois\[:, 0\]"),
        (lambda a: dict(a, rois=a["rois"].index_fill(1, torch.tensor([3]), float("nan"))), ValueError, "rois must be finite"),
        (lambda a: dict(a, offset=a["offset"][:, :3]), ValueError, "offset must have shape"),
        (lambda a: dict(a, offset=a["offset"][:2]), ValueError, "offset must have shape"),
        (lambda a: dict(a, offset=a["offset"][..., :2]), ValueError, "offset must have shape"),
        (lambda a: dict(a, offset=a["offset"][0]), ValueError, "offset must have shape"),
        (lambda a: dict(a, offset=a["offset"].repeat(1, 3, 1, 1)), ValueError, "offset must have shape"),
        (lambda a: dict(a, offset=a["offset"].float()), TypeError, "offset has dtype"),
        (lambda a: dict(a, offset=a["offset"].to("meta")), ValueError, "offset is on meta"),
        (lambda a: dict(a, group_size=0), ValueError, "group_size must be a positive int"),
        (lambda a: dict(a, sample_per_part=0), ValueError, "sample_per_part must be a positive int"),
        (lambda a: dict(a, part_size=-1), ValueError, "part_size must be a positive int"),
    ])
    def test_exception(self, change, error, match):
        x, rois, offset, kwargs = random_case(batch=2, output_dim=2, num_classes=2)
        args = change(dict(input=x, rois=rois, offset=offset, **kwargs))
        with pytest.raises(error, match=match):
            deform_psroi_pool(**args)


@cuda
class TestDeformPSRoIPoolCUDA:
    @pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
    def test_conformance(self, path):
        t, kwargs = load_case(path)
        cpu = forward_backward(deform_psroi_pool, t["x"], t["rois"], t.get("trans"), kwargs, dy=t["dy"])
        trans = t.get("trans")
        gpu = forward_backward(deform_psroi_pool, t["x"].cuda(), t["rois"].cuda(),
                               None if trans is None else trans.cuda(), kwargs, dy=t["dy"].cuda())
        torch.testing.assert_close(gpu[0].cpu(), t["y"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gpu[1].cpu(), t["grad_x"], rtol=1e-3, atol=1e-4)
        if trans is not None:
            torch.testing.assert_close(gpu[2].cpu(), t["grad_trans"], rtol=1e-3, atol=1e-4)
        for want, got in zip(cpu, gpu):
            if want is not None:
                torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)

    def test_deterministic_mode_refuses_backward(self):
        """The backward's atomics are reported to torch.use_deterministic_algorithms."""
        x, rois, offset, kwargs = random_case(rois=4)
        x = x.cuda().requires_grad_()
        torch.use_deterministic_algorithms(True)
        try:
            y = deform_psroi_pool(x, rois.cuda(), offset.cuda(), **kwargs)
            with pytest.raises(RuntimeError, match="deform_psroi_pool_backward_cuda"):
                y.sum().backward()
        finally:
            torch.use_deterministic_algorithms(False)

    @pytest.mark.parametrize("with_offset", [True, False])
    def test_matches_cpu(self, with_offset):
        x, rois, offset, kwargs = random_case(rois=16, num_classes=2, output_dim=4, offset=with_offset)
        cpu = forward_backward(deform_psroi_pool, x, rois, offset, kwargs)
        gpu = forward_backward(deform_psroi_pool, x.cuda(), rois.cuda(), None if offset is None else offset.cuda(),
                               kwargs, dy=torch.randn(cpu[0].shape, generator=torch.Generator().manual_seed(1),
                                                      dtype=x.dtype).cuda())
        for want, got in zip(cpu, gpu):
            if want is not None:
                torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
    def test_low_precision(self, dtype, tol):
        """Half inputs, float32 accumulation: within a few input ulps of float64 on the rounded inputs."""
        x, rois, offset, kwargs = random_case(rois=8, num_classes=2, output_dim=4, spatial_scale=1.0)
        x, rois, offset = (t.to(dtype) for t in (x, rois, offset))
        dy = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1)).to(dtype)
        want = forward_backward(deform_psroi_pool, x.double(), rois.double(), offset.double(), kwargs, dy=dy.double())
        got = forward_backward(deform_psroi_pool, x.cuda(), rois.cuda(), offset.cuda(), kwargs, dy=dy.cuda())
        for w, g in zip(want, got):
            assert g.dtype == dtype
            torch.testing.assert_close(g.cpu().double(), w, rtol=tol, atol=tol * max(1.0, w.abs().max().item()))

    def test_unusable_rois(self):
        x, rois, offset, kwargs = random_case()
        rois[1, 0], rois[2, 4] = 9, float("nan")
        out = torch.ops.dcnviz.deform_psroi_pool(x.cuda(), rois.cuda(), offset.cuda(), *kwargs.values())
        assert (out[1:3] == 0).all()
