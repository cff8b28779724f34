"""Timings of dcnviz's operators at the sizes of the official R-FCN model, next to torchvision's
``deform_conv2d`` and a plain ``conv2d`` of the same shape measured in the same run.

Shapes (600x1000 image, stride-16 features):
    res5 deformable conv: input (1, 512, 38, 63), weight (512, 512, 3, 3), stride 1, padding 2,
    dilation 2, offsets ~ N(0, 2 px), deformable_groups 4 and 1; NCHW, or (``channels_last``) input,
    offsets and weights channels-last, as the prepared models run them;
    R-FCN head deformable PS RoI pooling (COCO): class scores, input (1, 81*49, 38, 63) with offsets
    (300, 2*81, 7, 7) ~ N(0, 1), and its no-trans mode next to ``psroi_pool`` of the same input; boxes,
    input (1, 8*49, 38, 63) with offsets (300, 2, 7, 7); 300 random RoIs, pooled/group/part size 7,
    sample_per_part 4, trans_std 0.1.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

RES5 = dict(input=(1, 512, 38, 63), weight=(512, 512, 3, 3), stride=1, padding=2, dilation=2, offset_std=2.0,
            deformable_groups=(4, 1))
HEAD = dict(classes=81, group=7, feature=(38, 63), image=(600, 1000), rois=300, spatial_scale=1 / 16,
            sample_per_part=4, trans_std=0.1)
OPS = ("conv", "pool")


@dataclass
class Timing:
    """Median times in milliseconds; ratios are to ``conv2d`` at the res5 shape in the same run."""
    op: str
    impl: str
    case: str
    forward_ms: float
    forward_backward_ms: float
    forward_ratio: float = float("nan")
    forward_backward_ratio: float = float("nan")


@dataclass
class _Case:
    op: str
    impl: str
    case: str
    forward: Callable[[], torch.Tensor]
    inputs: list[torch.Tensor]  # what forward+backward differentiates


def _time(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - start) * 1e3


def _time_cases(cases: list[_Case], device: torch.device, repeats: int) -> list[Timing]:
    """Median forward and forward+backward times after one warm-up run. The cases take turns within
    each repeat, so a change in machine load affects them alike and the ratios stay meaningful."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runs = []
    for c in cases:
        grad = torch.randn_like(c.forward())
        runs.append((c, torch.no_grad()(c.forward),
                     lambda c=c, grad=grad: torch.autograd.grad(c.forward(), c.inputs, grad)))
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in cases]
    for rep in range(repeats + 1):
        for (c, fwd, fwd_bwd), (t_fwd, t_fwd_bwd) in zip(runs, times):
            a, b = _time(fwd, sync), _time(fwd_bwd, sync)
            if rep > 0:  # the first round is the warm-up
                t_fwd.append(a)
                t_fwd_bwd.append(b)
    return [Timing(c.op, c.impl, c.case, statistics.median(f), statistics.median(fb))
            for c, (f, fb) in zip(cases, times)]


def _res5_inputs(device: torch.device, gen: torch.Generator, layout: torch.memory_format):
    s = RES5
    x = torch.randn(s["input"], generator=gen).to(device, memory_format=layout).requires_grad_()
    w = (torch.randn(s["weight"], generator=gen) * 0.01).to(device, memory_format=layout).requires_grad_()
    return x, w, dict(stride=s["stride"], padding=s["padding"], dilation=s["dilation"])


def _conv2d_case(device: torch.device, gen: torch.Generator, layout: torch.memory_format) -> _Case:
    x, w, kw = _res5_inputs(device, gen, layout)
    return _Case("conv2d", "torch", "res5", lambda: torch.nn.functional.conv2d(x, w, **kw), [x, w])


def _deform_conv_cases(device: torch.device, gen: torch.Generator, layout: torch.memory_format) -> list[_Case]:
    import torchvision

    from dcnviz.ops import deform_conv2d

    x, w, kw = _res5_inputs(device, gen, layout)
    cases = []
    for dg in RES5["deformable_groups"]:
        with torch.no_grad():  # the offset map has the output's size
            n, _, ho, wo = torch.nn.functional.conv2d(x, w[:1], **kw).shape
        off = torch.randn(n, 2 * dg * w.shape[2] * w.shape[3], ho, wo, generator=gen) * RES5["offset_std"]
        off = off.to(device, memory_format=layout).requires_grad_()
        case = f"res5 dg={dg}"
        cases.append(_Case("deform_conv2d", "dcnviz", case,
                           lambda off=off, dg=dg: deform_conv2d(x, off, w, None, deformable_groups=dg, **kw),
                           [x, off, w]))
        cases.append(_Case("deform_conv2d", "torchvision", case,
                           lambda off=off: torchvision.ops.deform_conv2d(x, off, w, None, **kw), [x, off, w]))
    return cases


def _random_rois(n: int, image_hw: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """(n, 5) [0, x1, y1, x2, y2] boxes inside the image, in image pixels."""
    h, w = image_hw
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
    size = 16 + torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.5, h * 0.5])
    x2y2 = torch.minimum(xy + size, torch.tensor([w - 1.0, h - 1.0]))
    return torch.cat([torch.zeros(n, 1), xy, x2y2], dim=1)


def _pool_cases(device: torch.device, gen: torch.Generator) -> list[_Case]:
    """The four pooling calls of the R-FCN head at its real shapes, and ``psroi_pool`` of the class
    input for the no-trans comparison."""
    from dcnviz.ops import deform_psroi_pool, psroi_pool

    s = HEAD
    k, g, n = s["classes"], s["group"], s["rois"]
    rois = _random_rois(n, s["image"], gen).to(device)
    kw = dict(spatial_scale=s["spatial_scale"], group_size=g, pooled_size=g, part_size=g,
              sample_per_part=s["sample_per_part"])
    cases = []
    # (case, output channels, offset classes): class scores with one offset class per class; boxes (4
    # coordinates x 2, class-agnostic) with one shared offset class.
    for name, out, classes in (("cls", k, k), ("bbox", 8, 1)):
        x = torch.randn(1, out * g * g, *s["feature"], generator=gen).to(device).requires_grad_()
        off = torch.randn(n, 2 * classes, g, g, generator=gen).to(device).requires_grad_()
        case = f"head {name} {n} rois"
        cases.append(_Case("deform_psroi_pool", "dcnviz", case,
                           lambda x=x, off=off, out=out: deform_psroi_pool(x, rois, off, output_dim=out,
                                                                            trans_std=s["trans_std"], **kw),
                           [x, off]))
        if name == "cls":
            cases.append(_Case("deform_psroi_pool", "dcnviz", case + " no-trans",
                               lambda x=x, out=out: deform_psroi_pool(x, rois, None, output_dim=out, **kw), [x]))
            cases.append(_Case("psroi_pool", "dcnviz", case,
                               lambda x=x, out=out: psroi_pool(x, rois, spatial_scale=s["spatial_scale"],
                                                               output_dim=out, group_size=g, pooled_size=g), [x]))
    return cases


def run_ops(device: str = "cpu", repeats: int = 5, ops: tuple[str, ...] = OPS, seed: int = 0,
            channels_last: bool = False) -> list[Timing]:
    """Time the operators; ``ops`` picks "conv" (res5 deformable convolutions) and/or "pool" (R-FCN head
    pooling). The res5 ``conv2d`` is always measured: every ratio is relative to it. ``channels_last``:
    the res5 convolutions' tensors in that layout."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    cases = [_conv2d_case(dev, gen, layout)]
    if "conv" in ops:
        cases += _deform_conv_cases(dev, gen, layout)
    if "pool" in ops:
        cases += _pool_cases(dev, gen)
    rows = _time_cases(cases, dev, repeats)
    for r in rows:
        r.forward_ratio = r.forward_ms / rows[0].forward_ms
        r.forward_backward_ratio = r.forward_backward_ms / rows[0].forward_backward_ms
    return rows


def as_dicts(rows: list[Timing]) -> list[dict]:
    return [asdict(r) for r in rows]


def comparisons(rows: list[Timing]) -> list[dict]:
    """The ratios #16 asks for besides those to conv2d, where both rows were timed: dcnviz's no-trans
    ``deform_psroi_pool`` against its ``psroi_pool`` of the same input, forward and forward+backward."""
    by_case = {(r.op, r.case): r for r in rows if r.impl == "dcnviz"}
    found = []
    for (op, case), r in by_case.items():
        if op != "deform_psroi_pool" or not case.endswith(" no-trans"):
            continue
        base = by_case.get(("psroi_pool", case.removesuffix(" no-trans")))
        if base is not None:
            found.append(dict(name=f"deform_psroi_pool no-trans / psroi_pool, {base.case}",
                              forward_ratio=r.forward_ms / base.forward_ms,
                              forward_backward_ratio=r.forward_backward_ms / base.forward_backward_ms))
    return found


def format_table(rows: list[Timing]) -> str:
    """Fixed-width table: times in ms and as a multiple of conv2d's time."""
    head = ("op", "impl", "case", "fwd ms", "x conv2d", "fwd+bwd ms", "x conv2d")
    cells = [head] + [(r.op, r.impl, r.case, f"{r.forward_ms:.1f}", f"{r.forward_ratio:.2f}",
                       f"{r.forward_backward_ms:.1f}", f"{r.forward_backward_ratio:.2f}") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(wd) if i < 3 else c.rjust(wd) for i, (c, wd) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    lines += [f"{c['name']}: forward {c['forward_ratio']:.2f}, forward+backward {c['forward_backward_ratio']:.2f}"
              for c in comparisons(rows)]
    return "\n".join(lines)
