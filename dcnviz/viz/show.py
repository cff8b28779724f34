"""``--show``: pictures in a window, where this machine can open one.

A window needs a display (on Linux and other X11/Wayland systems ``DISPLAY`` or ``WAYLAND_DISPLAY``; macOS
and Windows always have one) and a GUI toolkit: OpenCV's own windows when OpenCV was built with a GUI
(``opencv-python``; ``opencv-python-headless``, dcnviz's default, has none), else matplotlib with an
interactive backend (Tk, Qt, GTK, macOS). :func:`open_window` says in one line why not when neither works,
and the command goes on saving its files. Each picture stays up for ``delay`` seconds (images) or is
replaced by the next (video frames); the window closes at the end of the run.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import numpy as np

IMAGE_DELAY = 0.5  # seconds each image stays on screen
FRAME_DELAY = 0.001


def no_display_reason() -> str | None:
    """Why no window can be opened here (a phrase), or None when a display is there."""
    if sys.platform in ("darwin", "win32"):
        return None
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    return None


class _OpenCVWindow:
    def __init__(self, title: str):
        import cv2

        self.cv2, self.title = cv2, title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def show(self, picture: np.ndarray, caption: str, delay: float) -> None:
        self.cv2.setWindowTitle(self.title, caption)
        self.cv2.imshow(self.title, picture)
        self.cv2.waitKey(max(1, round(1000 * delay)))

    def close(self) -> None:
        self.cv2.destroyWindow(self.title)


class _MatplotlibWindow:
    def __init__(self, title: str, plt):
        self.plt = plt
        self.fig = plt.figure(title)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.axis("off")
        self.shown = None

    def show(self, picture: np.ndarray, caption: str, delay: float) -> None:
        rgb = picture[..., ::-1]
        if self.shown is None or self.shown.get_array().shape != rgb.shape:
            self.ax.clear()
            self.ax.axis("off")
            self.shown = self.ax.imshow(rgb)
        else:
            self.shown.set_data(rgb)
        self.fig.canvas.manager.set_window_title(caption)
        self.plt.pause(delay)

    def close(self) -> None:
        self.plt.close(self.fig)


def _opencv_has_gui() -> bool:
    import cv2

    info = cv2.getBuildInformation()
    gui = next((line for line in info.splitlines() if line.strip().startswith("GUI:")), "GUI: NONE")
    return "NONE" not in gui.upper()


def _interactive_pyplot():
    """matplotlib.pyplot on an interactive backend, or None."""
    import matplotlib

    for backend in ("QtAgg", "TkAgg", "GTK4Agg", "GTK3Agg", "MacOSX"):
        try:
            matplotlib.use(backend, force=True)
            import matplotlib.pyplot as plt

            plt.figure("dcnviz").clear()  # fails here when the toolkit cannot reach the display
            plt.close("dcnviz")
            return plt
        except Exception:  # noqa: BLE001 -- any toolkit failure means: try the next one
            continue
    matplotlib.use("Agg", force=True)
    return None


def open_window(title: str, warn: Callable[[str], None]):
    """A window with ``show(picture_bgr, caption, delay)`` and ``close()``, or None after one ``warn`` line
    saying why none can be opened (the command then goes on without showing)."""
    reason = no_display_reason()
    if reason is None:
        if _opencv_has_gui():
            try:
                return _OpenCVWindow(title)
            except Exception as e:  # noqa: BLE001 -- e.g. the display refuses the connection
                reason = f"OpenCV could not open a window ({type(e).__name__})"
        else:
            plt = _interactive_pyplot()
            if plt is not None:
                return _MatplotlibWindow(title, plt)
            reason = "OpenCV has no GUI (opencv-python-headless) and matplotlib has no interactive backend"
    warn(f"Warning: --show: {reason}; results are saved only")
    return None
