"""Loads the compiled extension, which registers the ``torch.ops.dcnviz`` kernels."""
try:
    from dcnviz import _C  # noqa: F401  (importing registers the operators)
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "dcnviz's compiled extension dcnviz._C is missing or does not match this torch; "
        "reinstall with `pip install --no-build-isolation -e .`"
    ) from exc
