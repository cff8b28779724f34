"""mxnet_cpu_inference: the same network, with the arithmetic of MXNet's CPU executor."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tiny_models
from dcnviz.models.mxnet_cpu import OneDNNConv2d, fold_batchnorm, mxnet_cpu_inference
from dcnviz.models.resnet import FrozenBatchNorm2d


@pytest.mark.parametrize("variant", sorted(tiny_models.RFCN_VARIANTS))
def test_folding_keeps_the_network(variant):
    """In float64 the folded and unfolded models agree to rounding, blob by blob."""
    model = tiny_models.rfcn(variant, seed=3).double()
    folded = copy.deepcopy(model)
    fold_batchnorm(folded.backbone)
    data = torch.randn(1, 3, *tiny_models.SCALES, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rois = torch.tensor([[0, 4.0, 6.0, 40.0, 50.0], [0, 20.0, 3.0, 90.0, 60.0]], dtype=torch.float64)
    with torch.inference_mode():
        want = model.forward_official(data, rois, features=True)
        got = folded.forward_official(data, rois, features=True)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-10, msg=key)


def test_folded_weights_are_computed_like_mxnet():
    """alpha = gamma / sqrt(var + eps) in double, rounded once to float32; w' = w * alpha, b' = beta -
    alpha * mean in float32 (MXNet's UpdateConvWeightBias); written out here in numpy."""
    model = tiny_models.rfcn("rfcn", seed=4)
    block = model.backbone.res3a
    w = block.branch2a.weight.detach().numpy().copy()
    bn = {k: getattr(block.bn2a, k).numpy().copy() for k in ("weight", "bias", "running_mean", "running_var")}
    fold_batchnorm(model.backbone)
    alpha = (bn["weight"].astype(np.float64) / np.sqrt(bn["running_var"].astype(np.float64) + 1e-5)).astype(np.float32)
    np.testing.assert_array_equal(block.branch2a.weight.detach().numpy(), w * alpha[:, None, None, None])
    np.testing.assert_array_equal(block.branch2a.bias.detach().numpy(), bn["bias"] - alpha * bn["running_mean"])


def test_deformable_convs_keep_their_batchnorm():
    """MXNet folds only ordinary convolutions; DeformableConvolution keeps a separate BatchNorm."""
    backbone = fold_batchnorm(tiny_models.rfcn("rfcn_dcn").backbone)
    frozen = [name for name, m in backbone.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen == [f"{name}.bn2b" for name in backbone.stages[-1]]
    assert isinstance(backbone.bn_conv1, nn.Identity) and backbone.conv1.bias is not None
    assert all(isinstance(getattr(backbone, n).bn2b, nn.Identity) for n in backbone.stages[0])


@pytest.mark.parametrize("variant", ["rfcn_dcn", "deform_psroi"])
def test_prepared_model_computes_the_same_in_float32(variant):
    """Folded BatchNorms and oneDNN convs: the float32 blobs agree with the model as written to rounding."""
    model = tiny_models.rfcn(variant, seed=5)
    prepared = mxnet_cpu_inference(copy.deepcopy(model))
    assert not any(type(m) is nn.Conv2d for m in prepared.modules())
    before, after = model.state_dict().keys(), prepared.state_dict().keys()
    folded = [n for n, m in model.backbone.named_modules() if type(m) is nn.Conv2d and m.bias is None]
    assert after - before == {f"backbone.{n}.bias" for n in folded}
    kept_bn = len([m for m in prepared.modules() if isinstance(m, FrozenBatchNorm2d)])
    assert kept_bn == len(model.deformable_layers)
    assert len(before - after) == 4 * len(folded)
    data = torch.randn(1, 3, *tiny_models.SCALES, generator=torch.Generator().manual_seed(1))
    rois = torch.tensor([[0, 4.0, 6.0, 40.0, 50.0], [0, 20.0, 3.0, 90.0, 60.0]])
    with torch.inference_mode():
        want = model.forward_official(data, rois, features=True)
        got = prepared.forward_official(data, rois, features=True)
        again = mxnet_cpu_inference(prepared).forward_official(data, rois, features=True)  # a no-op
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)
        assert torch.equal(again[key], got[key]), key


@pytest.mark.parametrize("stride, padding, dilation, groups, bias", [
    (1, 0, 1, 1, False), (2, 0, 1, 1, True), (1, 1, 1, 1, True), (1, 2, 2, 1, False), (2, 3, 1, 1, False),
    (1, 1, 1, 4, True)])
def test_onednn_conv_is_a_conv(stride, padding, dilation, groups, bias):
    """Values and gradients of ``F.conv2d`` in float32; float64 takes ``F.conv2d`` itself."""
    g = torch.Generator().manual_seed(stride * 7 + padding)
    conv = nn.Conv2d(8, 12, 3 if padding else 1, stride, padding, dilation, groups, bias)
    fast = OneDNNConv2d.from_conv(conv)
    assert fast.weight is conv.weight and fast.bias is conv.bias
    x = torch.randn(2, 8, 23, 17, generator=g, requires_grad=True)
    want, got = conv(x), fast(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grads_want = torch.autograd.grad(want.square().sum(), [x, conv.weight])
    grads_got = torch.autograd.grad(got.square().sum(), [x, conv.weight])
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    conv64 = copy.deepcopy(conv).double()
    x64 = x.detach().double()
    assert torch.equal(OneDNNConv2d.from_conv(conv64)(x64), F.conv2d(x64, conv64.weight, conv64.bias, stride, padding,
                                                                     dilation, groups))


@pytest.mark.parametrize("with_shortcut", [False, True])
@pytest.mark.parametrize("kernel", [1, 3])
def test_fused_relu_and_add_are_the_separate_ops(with_shortcut, kernel):
    """OneDNNConv2d.fused (ReLU and residual add as oneDNN post-ops) gives the bits of conv, add and ReLU
    run one after another, and falls back to those ops where a gradient is needed."""
    g = torch.Generator().manual_seed(kernel)
    conv = OneDNNConv2d.from_conv(nn.Conv2d(16, 24, kernel, padding=kernel // 2))
    x = torch.randn(2, 16, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
    shortcut = torch.randn(2, 24, 9, 11, generator=g) if with_shortcut else None
    with torch.inference_mode():
        y = conv(x)
        want = torch.relu(y if shortcut is None else shortcut + y)
        got = conv.fused(x, shortcut)
    assert torch.equal(got, want)
    assert (got == 0).any() and (got > 0).any()  # the ReLU did something
    x.requires_grad_()
    out = conv.fused(x, shortcut)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), want)
    assert x.grad is not None


@pytest.mark.parametrize("channels_last", [True, False])
def test_consumed_shortcut_takes_the_sum_in_place(channels_last):
    """With ``consume`` the sum goes into the shortcut's own memory (a channels-last one), with the bits
    of the separate ops; without it the shortcut is left as it was. A shortcut in another layout is
    copied, and only the copy is written."""
    g = torch.Generator().manual_seed(11)
    conv = OneDNNConv2d.from_conv(nn.Conv2d(16, 24, 1))
    x = torch.randn(2, 16, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
    shortcut = torch.randn(2, 24, 9, 11, generator=g)
    if channels_last:
        shortcut = shortcut.contiguous(memory_format=torch.channels_last)
    before = shortcut.clone()
    with torch.inference_mode():
        want = torch.relu(shortcut + conv(x))
        kept = conv.fused(x, shortcut)
        assert torch.equal(shortcut, before)
        got = conv.fused(x, shortcut, consume=True)
    assert torch.equal(kept, want) and torch.equal(got, want)
    assert (got.data_ptr() == shortcut.data_ptr()) == channels_last
    assert torch.equal(shortcut, want if channels_last else before)


def _fused_calls(monkeypatch) -> list[bool]:
    """Records ``consume`` of every OneDNNConv2d.fused call with a shortcut."""
    calls, fused = [], OneDNNConv2d.fused

    def spy(self, x, shortcut=None, consume=False):
        if shortcut is not None:
            calls.append(consume)
        return fused(self, x, shortcut, consume)

    monkeypatch.setattr(OneDNNConv2d, "fused", spy)
    return calls


def test_stages_sum_into_the_shortcuts_nothing_else_reads(monkeypatch):
    """In a prepared backbone every block's sum goes into its shortcut: branch1's output, or the previous
    block's output, which nothing else reads. The stage outputs (and taps) keep their values, and the
    blobs are those of the model as written."""
    model = tiny_models.rfcn("rfcn_dcn", seed=6)
    prepared = mxnet_cpu_inference(copy.deepcopy(model))
    calls = _fused_calls(monkeypatch)
    data = torch.randn(1, 3, *tiny_models.SCALES, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        taps = {}
        outputs = prepared.backbone.stage_outputs(data, taps)
        copies = [o.clone() for o in outputs]
        want = model.backbone.stage_outputs(data)
    blocks = [n for names in prepared.backbone.stages for n in names]
    assert calls == [True] * len(blocks)
    for got, kept, expected in zip(outputs, copies, want):
        assert torch.equal(got, kept)  # no later block wrote into a stage output
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert all(taps[f"feat_{names[-1]}_relu"] is o for names, o in zip(prepared.backbone.stages, outputs))


def test_hooks_keep_the_tensors_they_see(monkeypatch):
    """A block whose output a hook sees (here: keeps) hands it on unconsumed, and so does a block seen by a
    pre-hook; a block called directly never consumes its input."""
    prepared = mxnet_cpu_inference(tiny_models.rfcn("rfcn", seed=7))
    backbone = prepared.backbone
    first, second = backbone.stages[1][:2]  # res3a (branch1) -> res3b
    pre_hooked = backbone.stages[3][1]  # res5b
    seen = []
    handles = [getattr(backbone, first).register_forward_hook(lambda m, args, out: seen.append((out, out.clone()))),
               getattr(backbone, pre_hooked).register_forward_pre_hook(lambda m, args: None)]
    calls = _fused_calls(monkeypatch)
    data = torch.randn(1, 3, *tiny_models.SCALES, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        backbone.stage_outputs(data)
        for handle in handles:
            handle.remove()
        kept, copy_ = seen[0]
        assert torch.equal(kept, copy_)
        blocks = [n for names in backbone.stages for n in names]
        consumed = dict(zip(blocks, calls))
        assert not consumed[second] and not consumed[pre_hooked] and consumed[first]
        assert sum(consumed.values()) == len(blocks) - 2
        x = kept.clone()
        getattr(backbone, second)(x)
        assert torch.equal(x, kept)


def test_hooked_convs_are_called_in_a_prepared_model():
    """A forward hook on a trunk or head conv of a prepared model sees its call (the fused path, which
    skips the module call, is not taken for it), and the blobs stay the same."""
    prepared = mxnet_cpu_inference(tiny_models.rfcn("rfcn", seed=8))
    convs = {"backbone.res3b.branch2c": None, "backbone.res2a.branch2a": None, "rpn.rpn_conv_3x3": None,
             "head.conv_new_1": None}
    modules = dict(prepared.named_modules())
    data = torch.randn(1, 3, *tiny_models.SCALES, generator=torch.Generator().manual_seed(4))
    rois = torch.tensor([[0, 4.0, 6.0, 40.0, 50.0]])
    with torch.inference_mode():
        want = prepared.forward_official(data, rois)
        handles = [modules[name].register_forward_hook(lambda m, a, out, name=name: convs.__setitem__(name, out.shape))
                   for name in convs]
        got = prepared.forward_official(data, rois)
    for h in handles:
        h.remove()
    assert all(shape is not None for shape in convs.values()), convs
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("deformable", [True, False])
def test_prepared_deeplab_softmax_and_labels(deformable):
    """On the prepared model's channels-last scores the softmax runs over each pixel's channels: the
    probabilities of a softmax along dim 1 to rounding; the predicted labels (which skip the softmax) are
    the argmax of croped_score."""
    model = mxnet_cpu_inference(tiny_models.deeplab(deformable, seed=9))
    data = torch.randn(1, 3, *tiny_models.SCALES, generator=torch.Generator().manual_seed(5)) * 50
    with torch.inference_mode():
        out = model.forward_official(data)
        assert out["croped_score"].stride(1) == 1 and out["softmax_prob"].stride(1) == 1  # channels innermost
        torch.testing.assert_close(out["softmax_prob"], F.softmax(out["croped_score"].contiguous(), dim=1),
                                   rtol=1e-6, atol=1e-7)
        labels = model.predict_inputs([data], [model.preprocess(np.zeros((*tiny_models.SCALES, 3), np.uint8))[1]])
    assert np.array_equal(labels[0].labels, out["croped_score"][0].argmax(0).to(torch.uint8).numpy())


def test_fused_in_bfloat16():
    """In bfloat16 the fused conv (where oneDNN has bfloat16 kernels) rounds once, from the float32
    accumulator: within bfloat16's precision of the float32 result, taken in the shortcut's own memory
    when consumed. Without those kernels the separate ops run, and the shortcut is left alone."""
    g = torch.Generator().manual_seed(12)
    conv = OneDNNConv2d.from_conv(nn.Conv2d(32, 48, 1))
    x = torch.randn(1, 32, 12, 10, generator=g).contiguous(memory_format=torch.channels_last)
    shortcut = torch.randn(1, 48, 12, 10, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = torch.relu(shortcut + conv(x))
        conv16, x16, s16 = copy.deepcopy(conv).bfloat16(), x.bfloat16(), shortcut.bfloat16()
        got = conv16.fused(x16, s16, consume=True)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    assert (got.data_ptr() == s16.data_ptr()) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
