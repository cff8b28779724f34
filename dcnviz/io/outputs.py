"""Output folders of a run: fresh numbered folders, never deleting or overwriting what is there.

A run writes into ``runs/detect``, or ``runs/detect2``, ``runs/detect3``, ... when that exists
(ultralytics' convention; older YOLO scripts deleted the folder and lost user data, so nothing here
ever removes a non-empty folder). ``exist_ok`` reuses the folder, replacing files of the same name.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from dcnviz.errors import OutputError


def increment_dir(base: str | os.PathLike = "runs/detect", exist_ok: bool = False) -> Path:
    """Create and return the output folder: ``base`` if it does not exist yet, else the first free
    ``base2``, ``base3``, ... (free = created by this call, via ``os.mkdir``, so two runs started
    at once never share a folder). With ``exist_ok``, ``base`` itself is returned, created if needed.

    Raises :class:`~dcnviz.errors.OutputError` when the folder cannot be created or written.
    """
    base = Path(base)
    try:
        if exist_ok:
            base.mkdir(parents=True, exist_ok=True)
            return _writable(base)
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            candidate = base if n == 1 else base.with_name(f"{base.name}{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return _writable(candidate)
    except FileExistsError as e:
        raise OutputError(f"cannot create output folder '{base}': '{e.filename}' exists and is not "
                          "a folder") from None
    except OSError as e:
        raise OutputError(f"cannot create output folder '{base}': {e.strerror or e}") from None
    raise AssertionError("unreachable")


def _writable(folder: Path) -> Path:
    if not folder.is_dir():
        raise OutputError(f"cannot use '{folder}' as output folder: it is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder '{folder}' is not writable")
    return folder


def check_not_inputs(out_dir: str | os.PathLike, subdirs: Iterable[str], inputs: Iterable[Path],
                     outputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before anything is written, a run that could overwrite one of its inputs.

    Two checks. (1) ``out_dir`` or ``out_dir/<sub>`` (``sub`` in ``subdirs``) is the folder of an
    input image: the run would write next to its inputs. (2) Any planned output file ``outputs``
    (paths relative to ``out_dir``) is an input: the same resolved real path (symlinked folders and
    files followed) or, when it exists, the same file (``st_dev``, ``st_ino``: a hard link). (2) is
    what catches ``detect photos/vis -r --out photos --exist-ok``, where ``photos/vis/a/cat.png``
    would map onto itself. Raises :class:`~dcnviz.errors.OutputError` in one line.
    """
    out_dir = Path(out_dir)
    inputs = [Path(p) for p in inputs]
    written = {os.path.realpath(out_dir)} | {os.path.realpath(out_dir / s) for s in subdirs}
    for image in inputs:
        if os.path.realpath(image.parent) in written:
            raise OutputError(f"output folder '{out_dir}' would write next to the input image "
                              f"'{image}'; choose another --out")
    index = _InputIndex(inputs)
    for rel in outputs:
        image = index.at(out_dir / rel)
        if image is not None:
            raise OutputError(f"output file '{out_dir / rel}' would overwrite the input image '{image}'; "
                              "choose another --out")


class _InputIndex:
    """The inputs by resolved real path and by file identity, to look many planned outputs up at once."""

    def __init__(self, inputs: Iterable[Path]):
        inputs = [Path(p) for p in inputs]
        self.by_path = {os.path.realpath(p): p for p in inputs}
        self.by_inode = {key: p for p in inputs if (key := _inode(p)) is not None}

    def at(self, target: str | os.PathLike) -> Path | None:
        return self.by_path.get(os.path.realpath(target)) or self.by_inode.get(_inode(Path(target)))


def check_output_file(path: Path, inputs: Iterable[Path], exist_ok: bool, option: str = "--output-file") -> None:
    """Refuse, before anything is written, an ``option`` FILE that is one of the ``inputs`` (the same
    resolved real path or the same file, as :func:`check_not_inputs` compares them), a folder, or an
    existing file without ``exist_ok``. Raises :class:`~dcnviz.errors.OutputError` in one line."""
    image = _InputIndex(inputs).at(path)
    if image is not None:
        raise OutputError(f"'{path}' is the input image '{image}'; choose another {option}")
    if path.is_dir():
        raise OutputError(f"'{path}' is a folder; {option} names the file to write")
    if path.exists() and not exist_ok:
        raise OutputError(f"'{path}' exists; choose another {option} or replace it with --exist-ok")


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # not there (yet): nothing to overwrite through a link
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def run_dir(out: str | os.PathLike, exist_ok: bool, subdirs: Sequence[str],
            inputs: Sequence[Path], outputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Context manager around ``increment_dir`` for one run: checks the inputs are not overwritten
    (``check_not_inputs`` with the planned ``outputs``, relative to the folder, before creating
    anything), yields the folder, and on exit removes it again only if this call
    created it and nothing was written into it (e.g. every image failed or the model did not load), with
    the folders above it that it created (``runs/`` of ``runs/detect``), if they are empty then."""
    if exist_ok:
        check_not_inputs(out, subdirs, inputs, outputs)
    existed = exist_ok and Path(out).is_dir()
    new_parents = [p for p in Path(out).parents if not p.exists()]  # nearest first
    folder = increment_dir(out, exist_ok=exist_ok)
    try:
        yield folder
    finally:
        if not existed:
            _remove_if_empty(folder, subdirs)
            for parent in new_parents:
                with contextlib.suppress(OSError):  # not empty (e.g. another run's folder): keep it
                    parent.rmdir()


def _remove_if_empty(folder: Path, subdirs: Sequence[str]) -> None:
    for sub in subdirs:
        with contextlib.suppress(OSError):  # not there, or not empty: keep it
            (folder / sub).rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def output_names(images: Sequence[Path]) -> dict[Path, Path]:
    """Relative output name (without suffix) for each input image, unique within the run.

    Names are the image paths relative to the deepest folder holding all of them, without the
    suffix: a flat folder gives ``cat``, ``dog``; a recursive run mirrors its subfolders
    (``a/cat``, ``b/cat``). Two images that differ only in suffix keep it (``cat_jpg``, ``cat_png``).
    A missing file among the inputs (to be reported and skipped) does not change the others' names.
    """
    if not images:
        return {}
    existing = [p for p in images if os.path.exists(p)] or images
    parents = [os.path.dirname(os.path.abspath(p)) for p in existing]
    root = os.path.commonpath(parents)
    rel = {p: Path(os.path.relpath(os.path.abspath(p), root)) for p in images}
    counts = collections.Counter(r.with_suffix("") for r in rel.values())
    clash = {stem for stem, n in counts.items() if n > 1}
    return {p: (r.with_name(r.name.replace(".", "_")) if r.with_suffix("") in clash else r.with_suffix(""))
            for p, r in rel.items()}
