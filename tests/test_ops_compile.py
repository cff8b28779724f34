"""A small model using all three operators runs under torch.compile(fullgraph=True) and matches eager."""
import pytest
import torch
from torch import nn

from dcnviz.ops import DeformConv2d, DeformPSRoIPool, PSRoIPool


class TinyRFCN(nn.Module):
    """Deformable conv -> PS score maps -> deformable PS RoI pooling (offsets from a no-trans pooling)
    and plain PS RoI pooling, the way the R-FCN head chains them."""

    def __init__(self, classes=3, k=3):
        super().__init__()
        self.offset = nn.Conv2d(4, 18, 3, padding=1)
        self.dconv = DeformConv2d(4, 8, 3, padding=2, dilation=2)
        self.score = nn.Conv2d(8, classes * k * k, 1)
        self.trans = nn.Conv2d(8, 2 * classes * k * k, 1)
        self.pool_trans = DeformPSRoIPool(0.25, 2 * classes, k, k, sample_per_part=2)
        self.pool = DeformPSRoIPool(0.25, classes, k, k, sample_per_part=2, trans_std=0.1)
        self.pspool = PSRoIPool(0.25, classes, k, k)

    def forward(self, x, rois):
        feat = torch.relu(self.dconv(x, self.offset(x)))
        score = self.score(feat)
        offsets = self.pool_trans(self.trans(feat), rois)
        return self.pool(score, rois, offsets).mean((2, 3)) + self.pspool(score, rois).mean((2, 3))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA is not available"))])
def test_compile_fullgraph_matches_eager(device):
    torch.manual_seed(0)
    model = TinyRFCN().double().to(device)
    nn.init.normal_(model.offset.weight, std=0.3)
    x = torch.randn(2, 4, 12, 10, dtype=torch.float64).to(device)
    rois = torch.tensor([[0, 3.0, 2.0, 30.0, 40.0], [1, 0.0, 0.0, 39.0, 47.0]], dtype=torch.float64).to(device)

    eager = model(x, rois)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x, rois)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for g, e in zip((p.grad for p in model.parameters()), eager_grads):
        torch.testing.assert_close(g, e)
