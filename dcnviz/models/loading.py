"""``load_model``: a registered model with its weights, from a name or a weights file.

Where weights come from, in order: the ``weights`` argument (an official MXNet ``.params`` file, converted
in memory, or a ``.safetensors`` file written by ``dcnviz convert``); for bundled models the file shipped
in the top-level ``weights/`` folder (see :func:`bundled_weights_dir`); for the official models ``$DCNVIZ_HOME/<name>.safetensors`` (default
``~/.cache/dcnviz/<name>.safetensors``). Official weights are never bundled or downloaded.
"""
from __future__ import annotations

import os
import sys

import torch

from dcnviz.convert.mxnet_params import read_params
from dcnviz.convert.weights import check_state_dict, convert_params, params_limits, read_weights, \
    state_dict_from_params
from dcnviz.errors import DeviceError, OutputError, UserError, WeightsError
from dcnviz.models.registry import get_spec, list_models


def weights_home() -> str:
    """Folder of converted official weights: ``$DCNVIZ_HOME``, else ``~/.cache/dcnviz``."""
    return os.environ.get("DCNVIZ_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "dcnviz")


def default_weights_path(name: str) -> str:
    return os.path.join(weights_home(), f"{name}.safetensors")


def bundled_dir(name: str) -> str:
    """A folder of files shipped with dcnviz (``weights``, ``samples``): the top-level ``<name>/`` beside
    the package in a source tree or an editable install, else ``<prefix>/share/dcnviz/<name>`` where a
    wheel install puts it (setup.py's ``data_files``)."""
    source_tree = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), name)
    if os.path.isdir(source_tree):
        return source_tree
    return os.path.join(sys.prefix, "share", "dcnviz", name)


def bundled_weights_dir() -> str:
    """Folder of the bundled ``.safetensors`` files (:func:`bundled_dir`)."""
    return bundled_dir("weights")


def _spec(name: str):
    try:
        return get_spec(name)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def expected_weights_path(spec) -> str:
    """Where ``load_model`` looks for a registered model's weights when none are given: the bundled file
    in :func:`bundled_weights_dir` for dcnviz's own models, :func:`default_weights_path` (where
    ``dcnviz convert`` writes) for the official ones. The file may not exist."""
    if spec.bundled:
        return os.path.join(bundled_weights_dir(), spec.weights)
    return default_weights_path(spec.name)


def _default_weights(spec) -> str:
    path = expected_weights_path(spec)
    if os.path.isfile(path):
        return path
    if spec.bundled:
        # A source tree without the trained files (e.g. a checkout made before they were committed).
        raise WeightsError(
            f"the bundled weights of {spec.name} are missing: {path} does not exist; see weights/README.md in the "
            f"dcnviz repository for how to get or retrain them, or pass a weights file (weights=FILE, or --weights FILE)")
    from dcnviz.models.official import DOWNLOAD

    raise WeightsError(
        f"the official weights of {spec.name} are not bundled with dcnviz: download {spec.weights} from "
        f"{DOWNLOAD}, then pass that file as the weights (weights=FILE, or --weights FILE) or convert it "
        f"once with `dcnviz convert {spec.weights} -o {path}` (the folder is $DCNVIZ_HOME, default ~/.cache/dcnviz)")


def load_model(name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None,
               device: str | torch.device = "cpu", fold_bn: bool = True) -> torch.nn.Module:
    """A registered model in eval mode on ``device``, with its weights, ready for inference.

    ``name_or_path`` is a registered name (see ``list_models()``) or a weights file whose model is read
    from its metadata (``.safetensors``) or recognised from its keys (official ``.params``). ``weights``
    overrides where the weights come from (see the module docstring). Every problem (unknown name,
    missing, corrupt or mismatched file) raises :class:`~dcnviz.errors.UserError` with one line saying
    what to do.

    With ``fold_bn`` (the default) the frozen BatchNorms are folded into their convs and the convs run as in
    MXNet's CPU executor (:func:`~dcnviz.models.mxnet_cpu.mxnet_cpu_inference`): the same network, faster on
    a CPU and rounding nearly as the official MXNet test run. ``fold_bn=False`` keeps the official module
    structure, whose ``state_dict()`` has exactly the official keys (e.g. to fine-tune or to re-export)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device: {exc}") from None
    name = os.fspath(name_or_path)
    if name in list_models():
        path = os.fspath(weights) if weights is not None else _default_weights(_spec(name))
        model_name = name
    elif os.path.isfile(name):
        if weights is not None:
            raise UserError(f"pass either a weights file ({name}) or weights=..., not both")
        path, model_name = name, None
    else:
        try:
            get_spec(name)
        except ValueError as exc:
            raise UserError(f"{exc} (and there is no weights file of that name)") from None
    expected = expected_state_dict(model_name) if model_name is not None else None
    model_name, state, _ = read_weights(path, model_name, expected=expected)
    spec = _spec(model_name)
    with torch.device("meta"):
        model = spec.factory()
    check_state_dict(state, model.state_dict(), path, model_name)
    model.load_state_dict(state, strict=True, assign=True)
    if fold_bn:
        from dcnviz.models.mxnet_cpu import mxnet_cpu_inference

        mxnet_cpu_inference(model)
    return model.eval().to(device)


def expected_state_dict(name: str) -> dict:
    """The state dict of a registered model, built on the meta device (shapes only, no memory): what
    :mod:`dcnviz.convert` needs to read a ``.params`` file for a model that is not an official one."""
    with torch.device("meta"):
        return _spec(name).factory().state_dict()


def convert_file(source: str | os.PathLike, out: str | os.PathLike | None = None, model: str | None = None,
                 force: bool = False, progress=None) -> dict:
    """Convert an official ``.params`` file to ``.safetensors`` (default ``$DCNVIZ_HOME/<model>.safetensors``;
    ``dcnviz convert``). ``model`` None: recognised from the file's keys among the official models.

    Returns the summary of :func:`dcnviz.convert.weights.convert_params`. Raises :class:`UserError`
    subclasses for an unknown model, a file that does not fit, or an output that exists (unless
    ``force``) or cannot be written."""
    source = os.fspath(source)
    if out is not None and os.path.exists(out) and not force:
        raise OutputError(f"{os.path.abspath(out)} already exists; use --force (force=True) to overwrite it")
    expected = expected_state_dict(model) if model is not None else None
    if not os.path.isfile(source):
        raise WeightsError(f"{source}: no such file")
    pf = read_params(source, progress, **params_limits(model, expected))
    model, state, bbox_keys = state_dict_from_params(pf, model, source, expected)
    if out is None:
        out = default_weights_path(model)
        try:
            os.makedirs(os.path.dirname(out), exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the weights folder {os.path.dirname(out)} ($DCNVIZ_HOME): "
                              f"{exc.strerror or exc}") from None
    return convert_params(source, out, pf, model, state, bbox_keys, _spec(model).classes, force)
