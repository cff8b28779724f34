"""deform_roi_pool (the paper's deformable RoI pooling, Faster R-CNN / FPN heads) against MXNet 1.9.1's
DeformablePSROIPooling with group_size=1 (tests/conformance/droi_*.npz, made by tools/mxnet_conformance.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dcnviz.ops import DeformRoIPool, deform_psroi_pool, deform_roi_pool
from dcnviz.ops import reference
from test_deform_psroi_pool import forward_backward, grid_case, random_case

CASES = sorted((Path(__file__).parent / "conformance").glob("droi_*.npz"))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def reference_roi_pool(input, rois, offset=None, **kwargs):
    """The pure-PyTorch reference of the PS op with one group: the same computation, written once."""
    return reference.deform_psroi_pool(input, rois, offset, output_dim=input.shape[1], group_size=1, **kwargs)


IMPLS = {"ext": deform_roi_pool, "reference": reference_roi_pool}


def load_case(path):
    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    assert meta["group_size"] == 1 and meta["output_dim"] == data["x"].shape[1]
    kwargs = {k: meta[k] for k in ("spatial_scale", "pooled_size", "part_size", "sample_per_part", "trans_std")}
    tensors = {k: torch.from_numpy(data[k]) for k in data.files if k != "meta"}
    assert ("trans" in tensors) != meta["no_trans"]
    return tensors, kwargs


def roi_case(*, channels=3, pooled_size=3, part_size=None, seed=0, offset=True):
    """A random (input, rois, offset, kwargs) for deform_roi_pool: one offset field for all channels."""
    x, rois, off, kwargs = random_case(output_dim=channels, group_size=1, pooled_size=pooled_size,
                                       part_size=part_size, num_classes=1, seed=seed, offset=offset)
    del kwargs["output_dim"], kwargs["group_size"]
    return x, rois, off, kwargs


class TestDeformRoIPool:
    def test_smoke(self):
        x, rois, offset, kwargs = roi_case()
        out = deform_roi_pool(x, rois, offset, **kwargs)
        assert out.shape == (rois.shape[0], 3, 3, 3) and torch.isfinite(out).all() and out.abs().sum() > 0

    def test_conformance_cases_present(self):
        assert len(CASES) == 24
        modes = [load_case(p)[0].get("trans") is None for p in CASES]
        assert any(modes) and not all(modes)  # both no_trans and offset cases

    @pytest.mark.parametrize("impl", IMPLS)
    @pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
    def test_conformance(self, path, impl):
        t, kwargs = load_case(path)
        out, gx, go = forward_backward(IMPLS[impl], t["x"], t["rois"], t.get("trans"), kwargs, dy=t["dy"])
        torch.testing.assert_close(out, t["y"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gx, t["grad_x"], rtol=1e-3, atol=1e-4)
        if "trans" in t:
            torch.testing.assert_close(go, t["grad_trans"], rtol=1e-3, atol=1e-4)

    @pytest.mark.parametrize("with_offset", [True, False])
    def test_is_the_ps_op_with_one_group(self, with_offset):
        """Bitwise the PS op with output_dim = C and group_size = 1 (the official call), gradients too."""
        x, rois, offset, kwargs = roi_case(channels=4, pooled_size=7, seed=3, offset=with_offset)
        ps = lambda a, r, o, **k: deform_psroi_pool(a, r, o, output_dim=4, group_size=1, **k)  # noqa: E731
        for want, got in zip(forward_backward(ps, x, rois, offset, kwargs),
                             forward_backward(deform_roi_pool, x, rois, offset, kwargs)):
            if want is not None:
                assert torch.equal(got, want)

    def test_same_bins_for_every_channel(self):
        """One offset field: channel c of the output is the pooling of input channel c alone."""
        x, rois, offset, kwargs = roi_case(channels=3, pooled_size=5)
        out = deform_roi_pool(x, rois, offset, **kwargs)
        for c in range(3):
            torch.testing.assert_close(out[:, c:c + 1], deform_roi_pool(x[:, c:c + 1], rois, offset, **kwargs),
                                       rtol=0, atol=0)

    @pytest.mark.parametrize("with_offset", [True, False])
    def test_gradcheck(self, with_offset):
        x, rois, offset, kwargs = grid_case(output_dim=3, group_size=1, pooled_size=3, samples=2)
        del kwargs["output_dim"], kwargs["group_size"]
        inputs = (x.requires_grad_(), rois, offset[:, :2].clone().requires_grad_() if with_offset else None)
        assert torch.autograd.gradcheck(lambda a, r, o: deform_roi_pool(a, r, o, **kwargs), inputs)

    @pytest.mark.parametrize("with_offset", [True, False])
    def test_opcheck(self, with_offset):
        """The op deform_roi_pool calls, with the arguments it passes (group_size 1, output_dim = C)."""
        x, rois, offset, kwargs = roi_case(channels=3, seed=2, offset=with_offset)
        args = (x.requires_grad_(), rois, offset.requires_grad_() if with_offset else None, kwargs["spatial_scale"],
                3, 1, kwargs["pooled_size"], kwargs["part_size"], kwargs["sample_per_part"], kwargs["trans_std"])
        torch.library.opcheck(torch.ops.dcnviz.deform_psroi_pool.default, args)

    def test_compile_fullgraph_matches_eager(self):
        """The official head's chain: no-offset pooling -> fc -> (R, 2, P, P) offsets -> deformable pooling."""
        x, rois, _, kwargs = roi_case(channels=2, pooled_size=3)
        fc = torch.nn.Linear(2 * 9, 2 * 9).double()

        def head(feat, boxes):
            plain = deform_roi_pool(feat, boxes, **dict(kwargs, trans_std=0.0))
            offset = fc(plain.flatten(1)).reshape(-1, 2, 3, 3)
            return deform_roi_pool(feat, boxes, offset, **kwargs)

        eager = head(x, rois)
        torch.testing.assert_close(torch.compile(head, fullgraph=True)(x, rois), eager)

    def test_module(self):
        x, rois, offset, kwargs = roi_case()
        module = DeformRoIPool(**kwargs)
        torch.testing.assert_close(module(x, rois, offset), deform_roi_pool(x, rois, offset, **kwargs))
        assert "trans_std=0.3" in repr(module) and "pooled_size=3" in repr(module)

    def test_noncontiguous(self):
        x, rois, offset, kwargs = roi_case(channels=4)
        x_nc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        offset_nc = offset.transpose(2, 3).contiguous().transpose(2, 3)
        for want, got in zip(forward_backward(deform_roi_pool, x, rois, offset, kwargs),
                             forward_backward(deform_roi_pool, x_nc, rois, offset_nc, kwargs)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)

    @pytest.mark.parametrize("change,error,match", [
        (lambda a: dict(a, input=a["input"][0]), ValueError, r"input must have shape \(N, C, H, W\)"),
        (lambda a: dict(a, input=a["input"].numpy()), TypeError, "input must be a torch.Tensor"),
        (lambda a: dict(a, input=a["input"].long()), TypeError, "input must be one of"),
        (lambda a: dict(a, rois=a["rois"][:, :4]), ValueError, r"rois must have shape \(R, 5\)"),
        (lambda a: dict(a, offset=a["offset"][:2]), ValueError, "offset must have shape"),
        (lambda a: dict(a, offset=a["offset"].repeat(1, 2, 1, 1)), ValueError, "offset must have shape"),
        (lambda a: dict(a, pooled_size=0), ValueError, "pooled_size must be a positive int"),
    ])
    def test_exception(self, change, error, match):
        x, rois, offset, kwargs = roi_case()
        with pytest.raises(error, match=match):
            deform_roi_pool(**change(dict(input=x, rois=rois, offset=offset, **kwargs)))


@cuda
class TestDeformRoIPoolCUDA:
    @pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
    def test_conformance(self, path):
        t, kwargs = load_case(path)
        trans = t.get("trans")
        gpu = forward_backward(deform_roi_pool, t["x"].cuda(), t["rois"].cuda(),
                               None if trans is None else trans.cuda(), kwargs, dy=t["dy"].cuda())
        torch.testing.assert_close(gpu[0].cpu(), t["y"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gpu[1].cpu(), t["grad_x"], rtol=1e-3, atol=1e-4)
        if trans is not None:
            torch.testing.assert_close(gpu[2].cpu(), t["grad_trans"], rtol=1e-3, atol=1e-4)

    def test_matches_cpu(self):
        x, rois, offset, kwargs = roi_case(channels=5, pooled_size=7)
        cpu = forward_backward(deform_roi_pool, x, rois, offset, kwargs)
        dy = torch.randn(cpu[0].shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype).cuda()
        gpu = forward_backward(deform_roi_pool, x.cuda(), rois.cuda(), offset.cuda(), kwargs, dy=dy)
        for want, got in zip(cpu, gpu):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-12)
