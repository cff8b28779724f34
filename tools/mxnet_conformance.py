"""Conformance cases for ``dcnviz.ops.deform_roi_pool`` from MXNet 1.9.1's own operator.

The official Faster R-CNN DCN and FPN DCN heads compute deformable RoI pooling as MXNet's
``contrib.DeformablePSROIPooling`` with ``group_size=1``: once without offsets (``no_trans``, the input of
the offset fc layer) and once with the fc's offsets reshaped to (R, 2, 7, 7) and ``trans_std=0.1``. Each
case calls that operator the same way on random data and records its output and gradients.

usage (in the MXNet venv, see tools/README.md):
    python tools/mxnet_conformance.py OUT_DIR SEED N

writes OUT_DIR/droi_000.npz ... with arrays ``x`` (N, C, H, W), ``rois`` (R, 5), ``trans`` (R, 2T, part,
part; absent in no_trans cases), the upstream gradient ``dy``, MXNet's ``y`` and gradients ``grad_x`` /
``grad_trans``, and ``meta`` (a JSON string of the operator's arguments).
"""
import json
import os
import sys

import numpy as np
import mxnet as mx
from mxnet import autograd


def random_rois(rng, count, batch, img_h, img_w):
    """[batch, x1, y1, x2, y2] in image pixels: ordinary boxes, boxes reaching past the image, tiny boxes,
    boxes with .5 corners (rounded half away from zero), and the whole image."""
    rows = []
    for _ in range(count):
        kind = rng.randint(5)
        if kind == 0:
            x1, y1 = rng.uniform(0, 0.7 * img_w), rng.uniform(0, 0.7 * img_h)
            x2, y2 = x1 + rng.uniform(2, 0.6 * img_w), y1 + rng.uniform(2, 0.6 * img_h)
        elif kind == 1:
            x1, y1 = rng.uniform(-30, 0.4 * img_w), rng.uniform(-30, 0.4 * img_h)
            x2, y2 = x1 + rng.uniform(0.5 * img_w, 1.2 * img_w), y1 + rng.uniform(0.5 * img_h, 1.2 * img_h)
        elif kind == 2:
            x1, y1 = rng.uniform(0, img_w), rng.uniform(0, img_h)
            x2, y2 = x1 + rng.uniform(0, 3), y1 + rng.uniform(0, 3)
        elif kind == 3:
            x1, y1 = np.floor(rng.uniform(0, 0.5 * img_w)) + 0.5, np.floor(rng.uniform(0, 0.5 * img_h)) + 0.5
            x2, y2 = x1 + np.floor(rng.uniform(4, 0.5 * img_w)), y1 + np.floor(rng.uniform(4, 0.5 * img_h))
        else:
            x1, y1, x2, y2 = 0.0, 0.0, img_w - 1.0, img_h - 1.0
        rows.append([rng.randint(batch), x1, y1, x2, y2])
    return np.array(rows, dtype=np.float32)


def case(rng):
    """One call of DeformablePSROIPooling with group_size=1 as the official heads make it, with the
    shapes and the offset scale varied (the official values are pooled 7, part 7, spp 4, trans_std 0.1)."""
    batch = int(rng.choice([1, 2]))
    channels = int(rng.choice([1, 3, 8]))
    pooled = int(rng.choice([1, 2, 3, 7]))
    part = pooled if rng.rand() < 0.75 else int(rng.choice([1, 2, 3, 7]))
    spp = int(rng.choice([1, 2, 4]))
    scale = float(rng.choice([0.25, 0.125, 0.0625, 0.03125]))
    trans_std = float(rng.choice([0.1, 0.1, 0.3]))
    height, width = int(rng.randint(5, 20)), int(rng.randint(5, 20))
    rois = random_rois(rng, int(rng.randint(1, 7)), batch, height / scale, width / scale)
    no_trans = bool(rng.rand() < 0.25)
    classes = 1 if rng.rand() < 0.7 or channels == 1 else channels  # T = 1 is the official form
    x = rng.randn(batch, channels, height, width).astype(np.float32)
    trans = (rng.randn(len(rois), 2 * classes, part, part) * rng.choice([0.5, 1.0, 3.0])).astype(np.float32)
    if rng.rand() < 0.2:  # offsets that put samples exactly on grid points
        trans = np.round(trans * 4) / 4
    dy = rng.randn(len(rois), channels, pooled, pooled).astype(np.float32)

    data, offsets = mx.nd.array(x), mx.nd.array(trans)
    data.attach_grad()
    offsets.attach_grad()
    args = dict(spatial_scale=scale, output_dim=channels, group_size=1, pooled_size=pooled, part_size=part,
                sample_per_part=spp, trans_std=trans_std, no_trans=no_trans)
    with autograd.record():
        y = mx.nd.contrib.DeformablePSROIPooling(data=data, rois=mx.nd.array(rois),
                                                 **({} if no_trans else {"trans": offsets}), **args)
    y.backward(mx.nd.array(dy))
    out = dict(x=x, rois=rois, dy=dy, y=y.asnumpy(), grad_x=data.grad.asnumpy(), meta=json.dumps(args))
    if not no_trans:
        out.update(trans=trans, grad_trans=offsets.grad.asnumpy())
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    out_dir, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(count):
        np.savez_compressed(os.path.join(out_dir, "droi_%03d.npz" % i), **case(rng))
    print("%d deform_roi_pool cases (MXNet %s, seed %d) in %s" % (count, mx.__version__, seed, out_dir))


if __name__ == "__main__":
    main()
