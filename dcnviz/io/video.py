"""Video files in and out, through OpenCV: frames are read as BGR ``uint8`` images (like
:func:`dcnviz.io.images.read_image`) and an annotated copy is written with the same frame rate.

A video is written to a temporary file beside its final name and moved there only when every frame
is in, so an interrupted run leaves no half-written video (as :func:`~dcnviz.io.images.write_bytes_atomic`
does for images).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from dcnviz.errors import ImageError, OutputError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
# Frame rate written when a file does not say its own.
DEFAULT_FPS = 25.0


def is_video(path: str | os.PathLike) -> bool:
    """An existing file whose suffix is a video suffix (any case)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES and Path(path).is_file()


class VideoReader:
    """The frames of a video file: ``fps``, ``frames`` (the count the file claims; 0 if unknown) and
    iteration over BGR ``uint8`` frames. Raises :class:`~dcnviz.errors.ImageError` when OpenCV cannot
    open the file or decode a single frame of it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        capture = cv2.VideoCapture(os.fspath(path))
        if not capture.isOpened():
            raise ImageError(path, "not a video OpenCV can read")
        self._capture = capture
        self.fps = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
        self.frames = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)

    def __iter__(self) -> Iterator[np.ndarray]:
        count = 0
        try:
            while True:
                ok, frame = self._capture.read()
                if not ok:
                    break
                count += 1
                yield frame
        finally:
            self._capture.release()
        if count == 0:
            raise ImageError(self.path, "no frame could be decoded")


@contextlib.contextmanager
def video_writer(path: str | os.PathLike, fps: float, size: tuple[int, int]):
    """A ``cv2.VideoWriter`` (MPEG-4, ``size`` = (width, height)) for ``path``, written to a temporary
    file that replaces ``path`` when the block ends without an error (and is removed otherwise)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot write '{path}': {e.strerror or e}") from None
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    try:
        if not writer.isOpened():
            raise OutputError(f"cannot write '{path}': OpenCV has no MPEG-4 encoder here")
        yield writer
        writer.release()
        os.replace(tmp, path)
    finally:
        writer.release()
        if os.path.exists(tmp):
            os.unlink(tmp)
