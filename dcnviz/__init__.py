"""dcnviz: run and look inside Deformable ConvNets (v1)."""

__version__ = "0.1.0"
