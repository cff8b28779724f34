"""What the model commands share: their options, device selection, model lookup, error reporting.

Errors reach the user as one line on stderr: ``Error: …``. A :class:`~dcnviz.errors.UserError`
(bad file, device, weights, output folder) exits 1; a bad option value is a usage error and exits 2
(click's convention); anything else is a bug, reported in one line that points to ``--debug``,
which shows the full traceback instead. This module imports torch only when a device is chosen, so
``dcnviz --help`` stays fast.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import click

from dcnviz.errors import DeviceError, UserError, WeightsError

DEBUG_KEY = "dcnviz.debug"
TASK_COMMANDS = {"detection": "detect", "segmentation": "segment"}
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _enable_debug(ctx: click.Context, param, value: bool) -> None:
    if value:
        ctx.meta[DEBUG_KEY] = True  # ctx.meta is shared by the group and its commands


debug_option = click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
                            callback=_enable_debug, help="Show the full Python traceback of an error.")


@contextlib.contextmanager
def report_errors(ctx: click.Context):
    """Turn exceptions raised inside a command into click's one-line ``Error: …`` (see module doc)."""
    try:
        yield
    except click.UsageError as e:
        raise one_line_usage_error(e) from None
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except BrokenPipeError:
        # The reader of stdout went away (``dcnviz detect --json … | head``): stop quietly like other
        # Unix tools, and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise click.exceptions.Exit(141) from None
    except Exception as e:
        if ctx.meta.get(DEBUG_KEY):
            raise
        if isinstance(e, WeightsError) and len(str(e).splitlines()) == 2:
            raise click.ClickException(str(e)) from None  # the problem, then the command that fixes it
        if isinstance(e, UserError):
            raise click.ClickException(one_line(e)) from None
        raise click.ClickException(f"{type(e).__name__}: {one_line(e)} (unexpected; run with --debug "
                                   "for the traceback)") from None


class OneLineUsageError(click.ClickException):
    """A usage error shown as ``Error: …`` alone (exit status 2): click's "Usage:" and "Try … --help"
    lines are left out, since ``--help`` is where the usage is."""

    exit_code = 2


def one_line_usage_error(e: click.UsageError) -> click.ClickException:
    """``e`` as a :class:`OneLineUsageError`, except click's "no arguments, so show the help" case."""
    if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):
        return e
    return OneLineUsageError(one_line(click.ClickException(e.format_message())))


def one_line(e: BaseException) -> str:
    """An exception's message as one line (multi-line messages are joined with "; ")."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(lines) or type(e).__name__


def _check_device(ctx, param, value: str) -> str:
    value = value.strip().lower()
    if not _DEVICE_RE.fullmatch(value):
        raise click.BadParameter(f"{value!r}: expected auto, cpu, cuda or cuda:N (e.g. cuda:0)")
    return value


def source_options(f: Callable) -> Callable:
    """The SOURCE... argument (files, folders, quoted globs) and ``--recursive``."""
    f = click.option("-r", "--recursive", is_flag=True,
                     help="Also search the subfolders of a SOURCE folder.")(f)
    return click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")(f)


# The shared vocabulary. Every command spells an option the same way and gives it the same meaning;
# tests/test_cli_vocabulary.py walks every command's --help and checks it against these factories, so a
# new command gets the shared options by calling them (``run_options`` for a command that runs a model).
DEFAULT_SPLIT = "test"


def model_option(help: str = "Registered model name (see 'dcnviz models').") -> Callable:
    """``-m/--model NAME``: a registered model (resolved with :func:`resolve_model`)."""
    return click.option("-m", "--model", metavar="NAME", help=help)


def weights_option() -> Callable:
    """``-w/--weights FILE``: weights instead of the model's own."""
    return click.option("-w", "--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help="Weights to use instead of the model's own: a .safetensors file (dcnviz convert, "
                             "dcnviz train) or an official MXNet .params file (converted in memory).")


def device_option(default: str = "auto") -> Callable:
    """``-d/--device auto|cpu|cuda[:N]`` (checked here; :func:`select_device` makes the torch device)."""
    return click.option("-d", "--device", default=default, metavar="auto|cpu|cuda[:N]", show_default=True,
                        callback=_check_device,
                        help="auto, cpu, cuda or cuda:N; auto uses the first GPU if there is one.")


def _dtype(ctx: click.Context, param, value: str | None) -> str:
    half = ctx.meta.pop("dcnviz_half", False)
    if half and value not in (None, "bfloat16"):
        raise click.BadParameter(f"--half means bfloat16, not {value}", param_hint="'--dtype'")
    return "bfloat16" if half else (value or "float32")


def _half(ctx: click.Context, param, value: bool) -> None:
    ctx.meta["dcnviz_half"] = value


def dtype_options() -> list[Callable[[Callable], Callable]]:
    """--dtype float32|bfloat16 (the value the command receives as ``dtype``) and --half, its alias for
    bfloat16: the precision the model computes in."""
    return [
        click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=None, callback=_dtype,
                     help="Precision the model runs in: bfloat16 casts weights and input (the deformable ops "
                          "compute in float32 on rounded values; about 3 significant digits)  "
                          "[default: float32]"),
        # Eager, so that --dtype's callback sees it whatever their order on the command line.
        click.option("--half", is_flag=True, is_eager=True, expose_value=False, callback=_half,
                     help="Same as --dtype bfloat16 (the half-precision type dcnviz supports on CPU and GPU)."),
    ]


def model_dtype(dtype: str):
    """The torch dtype of a ``--dtype`` value."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def native_bfloat16_cpu() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU (AVX512-BF16 or AMX)."""
    import torch

    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def in_dtype(net, dtype: str, warn: Callable[[str], None] | None = None):
    """A loaded model (float32) in a ``--dtype`` precision. bfloat16 is there to be faster; on a CPU without
    native bfloat16 its convolutions take slow generic paths (``rfcn_dcn_coco`` ~8x slower than float32 on
    an AMD Zen 3), so ``warn`` then gets one line saying so."""
    if dtype == "float32":
        return net
    if warn is not None and next(net.parameters()).device.type == "cpu" and not native_bfloat16_cpu():
        warn("Warning: this CPU has no native bfloat16 (AVX512-BF16 or AMX): --dtype bfloat16 runs several "
             "times slower than float32 here")
    return net.to(model_dtype(dtype))


def out_option(default: str | os.PathLike, help: str | None = None) -> Callable:
    """``-o/--out DIR``: always a folder (a command that writes one file also takes ``--output-file``)."""
    return click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                        default=Path(default), show_default=True,
                        help=help or "Output folder; if it exists, OUT2, OUT3, … is used instead.")


def exist_ok_option(help: str = "Write into OUT even if it exists (same-name files are replaced).") -> Callable:
    return click.option("--exist-ok", is_flag=True, help=help)


def quiet_option() -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help="Print errors only.")


def json_option(help: str) -> Callable:
    """``--json``: machine-readable results on stdout (the log stays on stderr)."""
    return click.option("--json", "json_out", is_flag=True, help=help)


def data_option(required: bool = True, help: str = "VOC-layout dataset folder (JPEGImages/, Annotations/, "
                                                    "ImageSets/; dcnviz synth writes one).") -> Callable:
    """``--data DIR``: a VOC-layout dataset folder."""
    return click.option("--data", required=required, metavar="DIR",
                        type=click.Path(file_okay=False, path_type=Path), help=help)


def split_option(default: str = DEFAULT_SPLIT, help: str = "Split: the ids in ImageSets/Main/SPLIT.txt.") -> Callable:
    """``--split NAME``, :data:`DEFAULT_SPLIT` everywhere (a command with another default says why in ``help``)."""
    return click.option("--split", default=default, show_default=True, metavar="NAME", help=help)


def threads_option() -> Callable:
    """``--threads N``: CPU threads for torch (applied with :func:`use_threads`)."""
    return click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                        help="CPU threads for torch (default: torch's own choice).")


def use_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` unless ``--threads`` was left out."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def show_option() -> Callable:
    """``--show``: also show each result in a window (:mod:`dcnviz.viz.show`; one warning line and no
    window where the machine has no display or GUI toolkit)."""
    return click.option("--show", is_flag=True,
                        help="Also show each result in a window where there is a display (otherwise one warning "
                             "line, and the run goes on).")


def figure_options() -> list[Callable[[Callable], Callable]]:
    """How a command's figures look and what they are saved as: ``--style default|paper`` (markers with a
    dark outline, sized by the image, or the official visualizer's look), ``--marker-alpha X`` (opacity of
    the points and parts) and ``--format png|svg|pdf`` (svg/pdf: vector graphics for papers; see
    :mod:`dcnviz.viz.sampling` and :mod:`dcnviz.viz.vector`)."""
    return [
        click.option("--style", type=click.Choice(["default", "paper"]), default="default", show_default=True,
                     help="default: markers with a dark outline that stay visible on any background, the unit a "
                          "larger green diamond; paper: the official visualizer's plain red and green squares."),
        click.option("--marker-alpha", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
                     metavar="X", help="Opacity of the sampling points and RoI parts (the unit stays opaque)."),
        click.option("--format", "fmt", type=click.Choice(["png", "svg", "pdf"]), default="png", show_default=True,
                     help="Figure file format; svg and pdf are vector graphics (the photo embedded)."),
    ]


def run_options(command: str, model_help: str) -> list[Callable[[Callable], Callable]]:
    """The options every command that runs a model shares: --model, --weights, --device, --out
    (default ``runs/<command>``), --exist-ok, --quiet."""
    return [model_option(model_help), weights_option(), device_option(), out_option(Path("runs", command)),
            exist_ok_option(), quiet_option()]


def model_options(task: str) -> Callable[[Callable], Callable]:
    """Options of a command that runs a ``task`` ("detection"/"segmentation") model over images:
    --model, --weights, --device, --out, --exist-ok, --quiet, --json, --dtype/--half, --debug."""
    command = TASK_COMMANDS[task]
    options = run_options(command, f"Registered model name (see 'dcnviz models'); default: the bundled "
                                   f"{task} model.") + [
        json_option("Print one JSON object per image on stdout (JSON Lines; schema in "
                    f"dcnviz/schemas/{'detections' if task == 'detection' else task}.schema.json)."),
        *dtype_options(),
        debug_option,
    ]

    return apply_options(options)


def deprecated(old: str, new: str) -> None:
    """One line on stderr: the old form ``old`` still works for this release; ``new`` replaces it."""
    click.echo(f"Deprecated: {old} still works for this release; use {new}", err=True)


def progress(total: int | None, unit: str = "img", quiet: bool = False, every: int | None = None):
    """A progress reporter with ``update(n=1)`` and ``close()`` (also a context manager): a tqdm bar on a
    terminal, and otherwise (a log file, a pipe) a plain ``k/N <unit>`` line every ``every`` items
    (default: about every tenth of ``total``, or 50), never a bar's carriage-return frames."""
    if quiet:
        return _PlainProgress(total, unit, every=0)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, file=sys.stderr, leave=False)
    return _PlainProgress(total, unit, every)


class _PlainProgress:
    def __init__(self, total: int | None, unit: str, every: int | None):
        self.total, self.unit, self.n = total, unit, 0
        self.every = every if every is not None else max(1, (total or 500) // 10)

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.every and self.n // self.every > before // self.every:
            of = f"/{self.total}" if self.total else ""
            click.echo(f"{self.n}{of} {self.unit}", err=True)

    def write(self, line: str, file=None) -> None:
        click.echo(line, err=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def apply_options(options: list[Callable[[Callable], Callable]]) -> Callable[[Callable], Callable]:
    """One decorator applying click ``options`` in the order given (first = first in --help)."""
    def decorate(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def select_device(spec: str = "auto", warn: Callable[[str], None] | None = None):
    """The ``torch.device`` for ``spec``: "auto", "cpu", "cuda" or "cuda:N".

    "auto" is ``cuda:0`` when CUDA is usable, else the CPU, silently: a CPU machine is a normal place
    to run (``warn`` is accepted for the callers that still pass it and not called). "cuda" and
    "cuda:N" raise :class:`~dcnviz.errors.DeviceError` when CUDA is not usable or N is not a
    visible device, saying what was found: ``torch.cuda.is_available()``, the device count,
    ``CUDA_VISIBLE_DEVICES`` and the CUDA version torch was built with.
    """
    import torch

    spec = spec.strip().lower()
    if not _DEVICE_RE.fullmatch(spec):
        raise DeviceError(f"unknown device {spec!r}; expected auto, cpu, cuda or cuda:N")
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if spec == "auto":
        if available:
            return torch.device("cuda", 0)
        return torch.device("cpu")
    index = int(spec.partition(":")[2] or 0)
    if available and index < count:
        return torch.device("cuda", index)
    found = (f"torch.cuda.is_available()={available}, device count {count}, CUDA_VISIBLE_DEVICES="
             f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!s}, torch built with "
             f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'no CUDA'}")
    if not available:
        raise DeviceError(f"--device {spec} requested but CUDA is not usable ({found}); use --device cpu")
    raise DeviceError(f"--device {spec} requested but only {count} CUDA device(s) are visible "
                      f"({found}); use --device cuda:0 … cuda:{count - 1} or --device cpu")


def resolve_model(name: str | None, task: str | None, default: str | None = None):
    """The registry's ``ModelSpec`` for ``--model name``; when ``name`` is None, ``default`` or else the
    first bundled ``task`` model. An unknown name (with the closest names) or a model of another task
    (``task`` None accepts any) is a usage error of ``--model``."""
    importlib.import_module("dcnviz.models")  # importing the package registers the models
    from dcnviz.models.registry import get_spec, list_models

    if name is None and default is not None:
        return get_spec(default)
    if name is None:
        bundled = [n for n in list_models() if get_spec(n).bundled and get_spec(n).task == task]
        if not bundled:
            raise UserError(f"no bundled {task} model is installed; choose one with --model "
                            f"(known models: {', '.join(list_models()) or 'none'})")
        return get_spec(bundled[0])
    try:
        spec = get_spec(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--model'") from None
    if task is not None and spec.task != task:
        other = TASK_COMMANDS.get(spec.task)
        hint = f"; use 'dcnviz {other}'" if other else ""
        raise click.BadParameter(f"{name!r} is a {spec.task} model, not a {task} model{hint}",
                                 param_hint="'--model'")
    return spec


def parse_classes(values: Sequence[str], class_names: Sequence[str]) -> set[int] | None:
    """Class ids from ``--classes`` values: names or ids, comma-separated, any case; None if no
    value was given. Background (:data:`dcnviz.data.classes.BACKGROUND_NAMES`) is not selectable.
    Raises BadParameter."""
    from dcnviz.data.classes import background_ids

    if not values:
        return None
    lookup = {name.lower(): i for i, name in enumerate(class_names)}
    background = set(background_ids(class_names))
    selectable = [n for i, n in enumerate(class_names) if i not in background]
    ids = set()
    for item in (v.strip() for value in values for v in value.split(",")):
        if not item:
            continue
        i = int(item) if item.isdigit() else lookup.get(item.lower())
        if i is None or not 0 <= i < len(class_names) or i in background:
            close = difflib.get_close_matches(item, selectable, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"classes: {', '.join(selectable)}"
            raise click.BadParameter(f"unknown class {item!r}; {hint}", param_hint="'--classes'")
        ids.add(i)
    return ids


# ------------------------------------------------------------------------------ dataset-scale runs
def dataset_run_options(f: Callable) -> Callable:
    """--workers, --resume, --save-every: options of a command that runs over a whole dataset
    (see :mod:`dcnviz.runner`)."""
    options = [
        click.option("--workers", type=click.IntRange(min=0), metavar="N",
                     help="DataLoader processes that read and preprocess images (per process under torchrun); "
                          "default: the CPU cores of this process less one, at most 8; 0 reads in this process."),
        click.option("--resume", is_flag=True,
                     help="Continue the interrupted run in OUT (the same model, weights, data and options)."),
        click.option("--save-every", type=click.IntRange(min=1), default=10, show_default=True, metavar="N",
                     help="Save the partial state (for --resume) and update the progress every N images of "
                          "each process."),
    ]
    return apply_options(options)(f)


def start_processes(device: str, quiet: bool):
    """This process's :class:`dcnviz.runner.Dist` (joining torchrun's process group when launched by it)
    on the device chosen by ``--device``."""
    from dcnviz.runner import distributed

    return distributed.init(device, select_device, None if quiet else lambda line: click.echo(line, err=True))


def finish_processes(ctx) -> None:
    from dcnviz.runner import distributed

    distributed.finish(ctx)


def run_folder(stack: contextlib.ExitStack, out: Path, exist_ok: bool, resume: bool, ctx) -> Path:
    """The output folder of a dataset run, the same on every process: with ``resume`` OUT itself (which
    must hold the interrupted run), else a fresh folder made by rank 0 (:func:`dcnviz.io.outputs.run_dir`,
    entered on ``stack``)."""
    from dcnviz.io.outputs import run_dir
    from dcnviz.runner.distributed import on_main

    if resume:
        if not Path(out).is_dir():
            raise UserError(f"nothing to resume: output folder {out} does not exist")
        return Path(out)
    return on_main(lambda: stack.enter_context(run_dir(out, exist_ok, (), [])), ctx)
