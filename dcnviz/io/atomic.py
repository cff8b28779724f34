"""The one atomic file writer of dcnviz: every file dcnviz writes (pictures, JSON, masks, converted
weights, checkpoints, training logs, synthetic datasets) goes through :func:`write_atomic`.

The content is written to a temporary file in the destination folder (same file system, so the final
``os.replace`` / ``os.link`` is atomic), given the usual mode (``0o666 & ~umask``; ``mkstemp`` creates
0600), then renamed onto the destination. If anything fails or is interrupted, the temporary file is
removed and an existing destination is left untouched. (This guards against errors and interrupts, not
power loss: there is no fsync.)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from dcnviz.errors import OutputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = True,
                 make_parents: bool = True) -> None:
    """Create ``path`` by calling ``write(tmp)``, which must write the whole content to the file ``tmp``
    (e.g. ``safetensors.torch.save_file(tensors, tmp)``), then rename it onto ``path``.

    ``overwrite=False`` refuses an existing ``path``, also one created meanwhile by someone else
    (``os.link`` fails instead of replacing; on file systems without hard links it is checked just
    before the rename). ``make_parents`` creates the folder. File-system failures (no space, no
    permission, a file where a folder should be, an existing file) raise
    :class:`~dcnviz.errors.OutputError` in one line; exceptions of ``write`` itself propagate.
    """
    path = Path(path)
    exists = f"'{path}' already exists; use --force (force=True) to overwrite it"
    if not overwrite and os.path.lexists(path):
        raise OutputError(exists)
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot write '{path}': {e.strerror or e}") from None
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path, exists)
    except OSError as e:
        raise OutputError(f"cannot write '{path}': {e.strerror or e}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _link_new(tmp: str, path: Path, exists: str) -> None:
    try:
        os.link(tmp, path)  # atomic, and refuses to replace a file created meanwhile
    except FileExistsError:
        raise OutputError(exists) from None
    except OSError:  # no hard links on this file system: check, then rename
        if os.path.lexists(path):
            raise OutputError(exists) from None
        os.replace(tmp, path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomic`; the folder is created)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    write_atomic(path, write, overwrite)
