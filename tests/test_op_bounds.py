"""The ops' integer safety (issue 17, defects 4 and 5): size products checked for int64 overflow, and
indices clamped as integers on maps wider than 2**24 pixels, where float32 cannot hold every index.

The crafted calls go straight to ``torch.ops.dcnviz`` (the Python wrappers check too). The overflow
cases run in a subprocess, since without the checks they read far outside the input and may crash.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcnviz.ops import deform_psroi_pool  # also loads the kernels

ROOT = Path(__file__).resolve().parents[1]
OPS = torch.ops.dcnviz


def _run(code: str) -> subprocess.CompletedProcess:
    program = "import torch, dcnviz.ops\nops = torch.ops.dcnviz\n" + code
    return subprocess.run([sys.executable, "-c", program], env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("call", [
    # output_dim * group_size**2 = 2**64 wraps to 0 = the zero channels of the input
    "ops.psroi_pool(torch.zeros(1, 0, 4, 4), torch.tensor([[0., 0, 0, 3, 3]]), 1.0, 1, 2**32, 2)",
    "ops.deform_psroi_pool(torch.zeros(1, 0, 4, 4), torch.tensor([[0., 0, 0, 3, 3]]), None, 1.0, 1, 2**32, 2,"
    " 2, 1, 0.0)",
    # kh*kw = 2**62 * 2 and 2*deformable_groups*kh*kw = 2**64 wrap to 0 = the offset's channels (zero-sized
    # tensors with zero strides, as torch refuses contiguous strides that overflow)
    "ops.deform_conv2d(torch.empty(0).as_strided((1, 0, 2**62, 2), (0, 0, 0, 0)), torch.zeros(1, 0, 1, 1),"
    " torch.empty(0).as_strided((0, 0, 2**62, 2), (0, 0, 0, 0)), None, 1, 1, 0, 0, 1, 1, 1, 1)",
    # 2 * pad_h = 2**64 - 2 wraps to -2, which makes a 3-row input look 1 row high
    "ops.deform_conv2d(torch.zeros(1, 1, 3, 1), torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, 1), None,"
    " 1, 1, 2**63 - 1, 0, 1, 1, 1, 1)",
], ids=["psroi-channels", "dpsroi-channels", "dconv-offset-channels", "dconv-padding"])
def test_overflowing_size_products_are_refused(call):
    proc = _run(f"""
try:
    {call}
except RuntimeError as e:
    print("refused:", str(e).splitlines()[0])
else:
    print("accepted")
""")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("refused:") and "overflows int64" in proc.stdout, proc.stdout


def _ones_then_sentinel(width: int) -> torch.Tensor:
    """A (1, 1, 1, width) float32 map of ones whose storage continues with 1e6: a read one past the map
    shows in the result."""
    storage = torch.full((width + 64,), 1e6)
    storage[:width] = 1.0
    return storage[:width].view(1, 1, 1, width)


def test_psroi_window_end_is_clamped_as_an_integer():
    """W = 2**24 + 3: float32(W) = 2**24 + 4, so a window ending at the map's right edge ended one past it."""
    width = 2 ** 24 + 3
    x = _ones_then_sentinel(width)
    rois = torch.tensor([[0.0, width - 9, 0.0, width - 1, 0.0]])
    out = OPS.psroi_pool(x, rois, 1.0, 1, 1, 1)
    assert out.item() == 1.0


def test_dpsroi_sample_index_is_clamped_as_an_integer():
    """W = 2**24 + 4: float32(W - 1) = W, so a sample at the right edge read the element past the map."""
    width = 2 ** 24 + 4
    x = _ones_then_sentinel(width)
    rois = torch.tensor([[0.0, width - 1, 0.0, width - 1, 0.0]])
    out = OPS.deform_psroi_pool(x, rois, None, 1.0, 1, 1, 1, 1, 2, 0.0)
    assert out.item() == 1.0



@pytest.mark.parametrize("width,samples", [(2 ** 30 + 1, 1), (4, 2 ** 15 + 1)], ids=["wide-map", "samples"])
def test_dpsroi_limits_of_the_32_bit_lanes(width, samples):
    """The CPU forward keeps pixel indices and sample counts in 32-bit vector lanes: maps over 2**30
    pixels a side and over 2**15 samples per part are refused with a message, before any memory is read
    (the wide map is a zero-stride view of one element)."""
    x = torch.zeros(1).as_strided((1, 1, 1, width), (0, 0, 0, 0))
    rois = torch.tensor([[0.0, 0, 0, 3, 3]])
    with pytest.raises(RuntimeError, match=r"at most 2\*\*30 pixels high and wide, and sample_per_part at most"):
        OPS.deform_psroi_pool(x, rois, None, 1.0, 1, 1, 1, 1, samples, 0.0)
    # the Python wrapper says it first, as a ValueError like its other argument checks
    with pytest.raises(ValueError, match=r"at most 2\*\*30 pixels high and wide and sample_per_part at most 2\*\*15"):
        deform_psroi_pool(x, rois, None, spatial_scale=1.0, output_dim=1, group_size=1, pooled_size=1,
                          sample_per_part=samples)
