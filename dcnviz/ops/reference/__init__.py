"""Slow, readable pure-PyTorch versions of the three operators, with the same semantics and the
official gradients (through autograd). The tests compare the compiled kernels against these."""
from dcnviz.ops.reference.deform_conv import deform_conv2d
from dcnviz.ops.reference.pooling import deform_psroi_pool, psroi_pool

__all__ = ["deform_conv2d", "deform_psroi_pool", "psroi_pool"]
