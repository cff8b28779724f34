"""Exceptions dcnviz raises for problems with the user's input (files, names, arguments).

The CLI prints a :class:`UserError` as one line, without a traceback; anything else is a bug.
"""


class UserError(ValueError):
    """A problem with something the user gave dcnviz (a file, a model name, an argument)."""


class ImageError(UserError):
    """An image file that cannot be used: missing, empty, not an image, truncated or too large.

    ``path`` is the file as the user named it and ``reason`` the short cause; ``str()`` names both.
    """

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")


class DatasetError(UserError):
    """Input paths or a dataset that cannot be used: a missing path, an empty folder, a glob that matches
    nothing, or a dataset file that is missing or unreadable; the message names the file."""


class WeightsError(UserError):
    """A weights file that cannot be loaded into the requested model (wrong model, shapes, format)."""


class DeviceError(UserError):
    """A requested device that this machine cannot provide (e.g. CUDA without a usable GPU)."""


class OutputError(UserError):
    """An output location that cannot be written, or that would overwrite the inputs."""
