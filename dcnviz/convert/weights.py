"""Official MXNet ``.params`` -> dcnviz state dicts -> ``.safetensors`` files, with strict key checks.

A converted file holds the float32 state dict of the dcnviz model plus metadata (all strings):
``format`` = "dcnviz", ``model``, ``classes`` (JSON list), ``source_file``, ``source_sha256``,
``dcnviz_version``, ``bbox_keys`` (which box-regression keys were used). Nothing is ever unpickled.

This package is a leaf: it knows the official parameter names (:mod:`dcnviz.convert.names`) but not the
model registry. For a model that is not one of the six official ones, the caller passes the model's
expected state dict (``expected``, e.g. built on the meta device); :mod:`dcnviz.models.loading` does.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Mapping

import numpy as np
import torch

from dcnviz.convert import names
from dcnviz.convert.mxnet_params import ParamsFile, read_params, sniff
from dcnviz.errors import OutputError, WeightsError
from dcnviz.io.atomic import write_atomic

Shape = tuple[int, ...]


def _list(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def expected_keys(model: str, expected: Mapping | None = None) -> tuple[dict[str, Shape], dict[str, Shape]]:
    """Required and optional official keys (``arg:``/``aux:`` names -> shapes) of a model.

    Official models use the packaged list from the spec; any other model (built from the same blocks)
    derives it from ``expected``, its dcnviz state dict (names -> tensors), which is then required."""
    specs = names.official_specs()
    if model in specs:
        return specs[model], names.official_optional()[model]
    if expected is None:
        raise WeightsError(f"{model} is not an official model: its expected state dict is needed to read "
                           "an MXNet .params file for it")
    required = {names.torch_to_official(k): tuple(v.shape) for k, v in expected.items()}
    optional = {k + "_test": s for k, s in required.items() if k in ("arg:rfcn_bbox_weight", "arg:rfcn_bbox_bias")}
    return required, optional


def _problems(found: dict[str, Shape], required: dict[str, Shape], optional: dict[str, Shape]) -> list[str]:
    """Missing, unexpected and mis-shaped keys, as message parts (empty when the file fits)."""
    missing = sorted(k for k in required if k not in found and k + "_test" not in found)
    unexpected = sorted(k for k in found if k not in required and k not in optional)
    wrong = sorted(f"{k}: file {found[k]}, model {s}" for k, s in {**required, **optional}.items()
                   if k in found and tuple(found[k]) != tuple(s))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_list(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_list(unexpected)})")
    if wrong:
        parts.append(f"{len(wrong)} with the wrong shape ({_list(wrong)})")
    return parts


def guess_model(found: dict[str, Shape]) -> str | None:
    """The official model whose keys and shapes the file matches exactly, or None."""
    for model, required in names.official_specs().items():
        if not _problems(found, required, names.official_optional()[model]):
            return model
    return None


def state_dict_from_params(pf: ParamsFile, model: str | None, source: str,
                           expected: Mapping | None = None) -> tuple[str, dict, str]:
    """Map an official key set onto the dcnviz state dict of ``model`` (guessed among the official models
    when None; ``expected`` as in :func:`expected_keys`).

    Returns (model, state dict of float32 tensors, which box keys were used). ``*_test`` keys replace
    the plain ones, as the official ``load_param(process=True)`` does (official.md §2a). Any missing,
    unexpected or mis-shaped key, or a non-float array, is refused in one :class:`~dcnviz.errors.WeightsError`."""
    found = {k: tuple(a.shape) for k, a in pf.arrays.items()}
    if model is None:
        model = guess_model(found)
        if model is None:
            closest = min(names.official_specs(), key=lambda m: len(set(found) ^ set(names.official_specs()[m])))
            detail = "; ".join(_problems(found, *expected_keys(closest)))
            raise WeightsError(f"{source} matches none of the official models (closest: {closest}: {detail}); "
                               "pass the model name explicitly to see its differences")
    required, optional = expected_keys(model, expected)
    parts = _problems(found, required, optional)
    if parts:
        hint = guess_model(found)
        raise WeightsError(f"{source} does not fit model {model}: " + "; ".join(parts)
                           + (f" (it looks like a {hint} file)" if hint and hint != model else ""))
    not_float = sorted(k for k, a in pf.arrays.items() if a.dtype.kind != "f")
    if not_float:
        raise WeightsError(f"{source}: non-float arrays cannot be weights: {_list(not_float)}")
    state = {}
    for key in required:
        test = key + "_test"
        array = pf.arrays[test] if test in pf.arrays else pf.arrays[key]
        state[names.official_to_torch(key)] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    used_test = any(k.endswith("_test") for k in pf.arrays)
    bbox_keys = "rfcn_bbox_*_test" if used_test else ("rfcn_bbox_*" if "arg:rfcn_bbox_weight" in required else "n/a")
    return model, state, bbox_keys


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def is_params_file(path: str) -> bool:
    """True when the file starts with the MXNet NDArray-list magic 0x112."""
    with open(path, "rb") as f:
        return f.read(8) == (0x112).to_bytes(8, "little")


def read_safetensors(path: str, model: str | None) -> tuple[str, dict, dict]:
    """A converted file: (model name from its metadata, float32 state dict, metadata)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k).float() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: neither an MXNet .params file nor a readable .safetensors file ({exc})") from None
    stored = meta.get("model")
    if model is None and stored is None:
        raise WeightsError(f"{path}: the file does not say which model it holds (no 'model' metadata); "
                           "pass the model name")
    if model is not None and stored is not None and stored != model:
        raise WeightsError(f"{path} holds weights of model {stored}, not {model}")
    return model or stored, state, meta


def check_state_dict(state: dict, expected: dict, source: str, model: str) -> None:
    """Refuse, in one message, a state dict whose keys or shapes differ from the model's."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
                   for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    parts = [f"{len(v)} {what} ({_list(v)})" for what, v in
             (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", wrong)) if v]
    if parts:
        raise WeightsError(f"{source} does not fit model {model}: " + "; ".join(parts))


def read_weights(path: str | os.PathLike, model: str | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 expected: Mapping | None = None) -> tuple[str, dict, dict]:
    """Weights from an MXNet ``.params`` file (converted in memory) or a converted ``.safetensors`` file.

    Returns (model name, float32 state dict in dcnviz names, metadata). ``model`` None means: from the
    file's metadata (safetensors) or guessed from its keys (``.params``, official models only).
    ``expected``: the state dict of ``model`` when it is not an official model (see
    :func:`expected_keys`); the ``.params`` reader also bounds what it reads by its parameter count."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path}: no such file")
    if os.path.getsize(path) >= 8 and is_params_file(path):
        pf = read_params(path, progress, **params_limits(model, expected))
        model, state, bbox_keys = state_dict_from_params(pf, model, path, expected)
        meta = {"model": model, "source_file": os.path.basename(path), "bbox_keys": bbox_keys,
                "source_encodings": _counts(pf.encodings), "source_dtypes": _counts(pf.dtypes)}
        return model, state, meta
    with open(path, "rb") as f:
        sniff(f.read(16), path, safetensors_ok=True)  # names pickles and zip archives
    return read_safetensors(path, model)


def _counts(counter) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counter.items()))


def metadata(model: str, classes, source: str, extra: dict) -> dict[str, str]:
    from dcnviz import __version__

    return {"format": "dcnviz", "model": model, "classes": json.dumps(list(classes)),
            "source_file": os.path.basename(source), "source_sha256": sha256(source),
            "dcnviz_version": __version__, **{k: str(v) for k, v in extra.items()}}


def params_limits(model: str | None, expected: Mapping | None = None) -> dict[str, int]:
    """Bounds for :func:`~dcnviz.convert.mxnet_params.read_params` (``max_arrays``, ``max_elements``):
    the key and parameter counts of ``model`` (``*_test`` box keys may come in addition to the plain
    ones) when known, else those of the largest official model."""
    known = model is not None and (expected is not None or model in names.official_specs())
    candidates = [model] if known else list(names.official_specs())
    candidates = [{**required, **optional} for required, optional in
                  (expected_keys(m, expected if m == model else None) for m in candidates)]
    return {"max_arrays": max(len(keys) for keys in candidates),
            "max_elements": max(sum(_numel(s) for s in keys.values()) for keys in candidates)}


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_safetensors(state: dict, out: str, meta: dict[str, str], force: bool = False) -> None:
    """Write atomically (:func:`dcnviz.io.atomic.write_atomic`); never replace an existing ``out``
    unless ``force``. The folder must exist."""
    from safetensors.torch import save_file

    out = os.path.abspath(out)
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise OutputError(f"output folder {folder} does not exist")
    tensors = {k: v.contiguous() for k, v in state.items()}
    write_atomic(out, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite=force, make_parents=False)


def convert_params(source: str | os.PathLike, out: str | os.PathLike, pf: ParamsFile, model: str, state: dict,
                   bbox_keys: str, classes, force: bool = False) -> dict:
    """Write the state dict read from ``source`` (by :func:`read_params` + :func:`state_dict_from_params`)
    to ``out`` as ``.safetensors`` with its metadata; returns a summary dict (model, output, counts,
    encodings, dtypes, box keys, sha256 of the source). :func:`dcnviz.models.convert_file` is the entry
    point that finds the model, its classes and the default output."""
    source = os.fspath(source)
    meta = metadata(model, classes, source,
                    {"bbox_keys": bbox_keys, "source_encodings": _counts(pf.encodings),
                     "source_dtypes": _counts(pf.dtypes)})
    write_safetensors(state, os.fspath(out), meta, force)
    return {"model": model, "output": os.path.abspath(out), "arrays": len(pf.arrays), "tensors": len(state),
            "parameters": sum(t.numel() for t in state.values()), "encodings": _counts(pf.encodings),
            "dtypes": _counts(pf.dtypes), "bbox_keys": bbox_keys, "source_sha256": meta["source_sha256"],
            "bytes": os.path.getsize(out)}
