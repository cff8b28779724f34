"""Exceptions dcnviz raises for problems with the user's input (files, names, arguments).

The CLI prints a :class:`UserError` as one line, without a traceback; anything else is a bug.
"""


class UserError(ValueError):
    """A problem with something the user gave dcnviz (a file, a model name, an argument)."""
