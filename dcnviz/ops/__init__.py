"""The operators of Deformable ConvNets v1, with the exact semantics of the official MXNet release.

Kernels are C++ (CPU) and CUDA in ``csrc/``; :mod:`dcnviz.ops.reference` holds slow, readable
pure-PyTorch versions of the same semantics, used by the tests.
"""
from dcnviz.ops.deform_conv import DeformConv2d, deform_conv2d
from dcnviz.ops.deform_psroi_pool import DeformPSRoIPool, deform_psroi_pool
from dcnviz.ops.deform_roi_pool import DeformRoIPool, deform_roi_pool
from dcnviz.ops.psroi_pool import PSRoIPool, psroi_pool

__all__ = ["deform_conv2d", "DeformConv2d", "deform_psroi_pool", "DeformPSRoIPool", "deform_roi_pool", "DeformRoIPool", "psroi_pool", "PSRoIPool"]
