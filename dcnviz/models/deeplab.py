"""DeepLab of the official release (official.md §1.5): ResNet-v1 trunk at stride 16, ``fc6`` (1x1, ReLU),
``score`` (1x1, C classes), a fixed bilinear grouped deconvolution ``upsampling`` (kernel 32, stride 16)
and a crop at offset (8, 8) to the input size (``croped_score``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcnviz.models.preprocess import preprocess
from dcnviz.models.resnet import FEATURE_STRIDE, ResNetV1, conv_bn_relu
from dcnviz.structures import Prep, Segmentation


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """MXNet ``Initializer._init_bilinear`` for a (channels, 1, size, size) deconvolution weight:
    f = ceil(size/2), c = (2f - 1 - f%2) / (2f), w[y, x] = (1 - |x/f - c|) (1 - |y/f - c|)."""
    f = np.ceil(size / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    r = 1 - np.abs(np.arange(size) / f - c)
    return torch.from_numpy(np.outer(r, r).astype(np.float32)).expand(channels, 1, size, size).clone()


class DeepLabHead(nn.Module):
    """``fc6`` -> ReLU -> ``score`` -> ``upsampling`` (ConvTranspose2d, groups = C, no bias; its weight is
    loaded from the file, initialised bilinear) -> crop ``[crop : crop + H, crop : crop + W]``."""

    def __init__(self, in_channels: int, num_classes: int, mid: int = 1024, kernel: int = 2 * FEATURE_STRIDE,
                 stride: int = FEATURE_STRIDE):
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, mid, 1)
        self.score = nn.Conv2d(mid, num_classes, 1)
        self.upsampling = nn.ConvTranspose2d(num_classes, num_classes, kernel, stride, groups=num_classes, bias=False)
        with torch.no_grad():
            self.upsampling.weight.copy_(bilinear_kernel(num_classes, kernel))
        self.crop = (kernel - stride) // 2

    def forward(self, feat: torch.Tensor, input_hw: tuple[int, int], out: dict, softmax: bool = True) -> None:
        """Writes ``score`` (N, C, h, w), ``croped_score`` (N, C, H, W; pre-softmax) and, with ``softmax``,
        ``softmax_prob``."""
        score = self.score(conv_bn_relu(self.fc6, None, feat))
        up = self.upsampling(score)
        h, w = input_hw
        out["score"] = score
        crop = out["croped_score"] = up[:, :, self.crop:self.crop + h, self.crop:self.crop + w]
        if not softmax:
            return
        if up.is_contiguous(memory_format=torch.channels_last):
            # over each pixel's channels where they are contiguous (the oneDNN convs' layout): along dim 1
            # the softmax first transposed the whole crop to NCHW, 1.7x the time at 1024x2048 on 2 threads
            out["softmax_prob"] = F.softmax(crop.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)
        else:
            out["softmax_prob"] = F.softmax(crop, dim=1)


class DeepLab(nn.Module):
    """DeepLab of the official release; ``classes`` has no background entry for Cityscapes."""

    task = "segmentation"

    def __init__(self, backbone: ResNetV1, classes: tuple[str, ...], palette: tuple[tuple[int, int, int], ...],
                 scales: tuple[int, int] = (1024, 2048), head_mid: int = 1024):
        super().__init__()
        self.backbone = backbone
        self.head = DeepLabHead(backbone.out_channels[1], len(classes), head_mid)
        self.classes, self.palette, self.scales = tuple(classes), tuple(palette), tuple(scales)

    @property
    def deformable_layers(self):
        """Geometry of the deformable convs (:class:`~dcnviz.models.resnet.DeformableLayer`), may be empty."""
        return self.backbone.deformable_layers

    def preprocess(self, image) -> tuple[torch.Tensor, Prep]:
        """The official test preprocessing at this model's scales: (1, 3, H, W) input and its ``Prep``."""
        return preprocess(image, self.scales)

    def forward(self, data: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_official(data)

    def forward_official(self, data: torch.Tensor, rois=None, features: bool = False) -> dict[str, torch.Tensor]:
        """The official test network on a preprocessed (N, 3, H, W) input (N = 1 as officially):
        ``res5{a,b,c}_branch2b_offset`` (DCN models), ``score``, ``croped_score`` (N, C, H, W), ``softmax_prob``,
        and with ``features`` the
        intermediate ``feat_*`` maps. ``rois`` must be None (accepted for a uniform signature)."""
        if rois is not None:
            raise ValueError("rois must be None for a segmentation model")
        return self._forward(data, features, softmax=True)

    def _forward(self, data: torch.Tensor, features: bool, softmax: bool) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        _, res5 = self.backbone(data, out)
        if not features:
            out = {k: v for k, v in out.items() if not k.startswith("feat_")}
        self.head(res5, tuple(data.shape[-2:]), out, softmax)
        return out

    @torch.inference_mode()
    def predict(self, image) -> Segmentation:
        """Per-pixel classes of ``image`` (path, or BGR uint8 (H, W, 3) array) at its original size.

        Official: argmax over classes at the network input size. When the input was resized (scale != 1),
        dcnviz resizes the class scores bilinearly (half-pixel centres, as ``cv2.resize``) to the original
        size before the argmax; the official tester evaluates at the input size. ``captured`` holds the
        ``res5*_branch2b_offset`` maps (1, 2*DG*9, h, w) on the CPU."""
        data, prep = self.preprocess(image)
        return self.predict_input(data, prep)

    @torch.inference_mode()
    def predict_input(self, data: torch.Tensor, prep: Prep) -> Segmentation:
        """:meth:`predict` on an input already preprocessed (``data`` and ``prep`` from :meth:`preprocess`,
        e.g. by DataLoader workers); ``data`` is moved to the model's device (non-blocking from pinned
        memory) and given its dtype (a model cast with ``.to(torch.bfloat16)`` runs in bfloat16); the
        captured offsets are float32 whatever the model's dtype."""
        return self.predict_inputs([data], [prep])[0]

    @torch.inference_mode()
    def predict_inputs(self, data: Sequence[torch.Tensor], preps: Sequence[Prep]) -> list[Segmentation]:
        """:meth:`predict_input` of N inputs of the same size (``data`` (1, 3, H, W) each) in one forward, each
        image's scores resized and labelled on its own (:func:`dcnviz.models.batching.predict_batch`)."""
        param = next(self.parameters())
        # the labels are the argmax of the scores: no softmax (~7 % of a 1024x2048 forward)
        out = self._forward(torch.cat(list(data)).to(param.device, param.dtype, non_blocking=True), False, False)
        results = []
        for n, prep in enumerate(preps):
            score = out["croped_score"][n:n + 1]
            if tuple(prep.input_size) != tuple(prep.image_size):
                score = F.interpolate(score, size=prep.image_size, mode="bilinear", align_corners=False)
            labels = score[0].argmax(dim=0).to(torch.uint8).cpu().numpy()
            captured = {layer.offset: out[layer.offset][n:n + 1].float().cpu() for layer in self.deformable_layers}
            results.append(Segmentation(labels, self.classes, self.palette, prep, captured))
        return results
