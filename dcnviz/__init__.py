"""dcnviz: run and look inside Deformable ConvNets (v1).

``list_models`` and ``load_model`` are imported on first use, so ``import dcnviz`` stays light.
"""

__version__ = "0.1.0"

_LAZY = {"list_models": "dcnviz.models", "load_model": "dcnviz.models"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dcnviz' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
