"""The root of fewclip's deliberate errors.

Every error fewclip raises on purpose derives from :class:`FewclipError`, so a caller can catch
them all at once, and the command line can tell a user error (a clear one-line message) from a
bug (a traceback). Each subclass also derives from the built-in exception a Python user would
expect (``FileExistsError``, ``ValueError`` ...), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BudgetError",
    "DamagedFileError",
    "FewclipError",
    "InvalidTypeError",
    "InvalidValueError",
    "MissingExtraError",
    "MissingFileError",
    "NotFoundError",
    "OutOfRangeError",
    "OutputFolderError",
    "UnknownNameError",
    "UnknownParameterError",
    "count_of",
    "did_you_mean",
]


class FewclipError(Exception):
    """An error fewclip raises on purpose: the message names the input, what was expected, what
    was found, and the option that fixes it."""


class InvalidValueError(FewclipError, ValueError):
    """An argument or input has the right type but a value fewclip cannot use."""


class InvalidTypeError(FewclipError, TypeError):
    """An argument has a type fewclip cannot use."""


class NotFoundError(FewclipError, KeyError):
    """A key, entry or split that does not exist (the message says what exists)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class MissingExtraError(FewclipError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class MissingFileError(FewclipError, FileNotFoundError):
    """A file or folder fewclip needs does not exist."""


class OutOfRangeError(FewclipError, IndexError):
    """An index outside the valid range."""


class BudgetError(FewclipError, MemoryError):
    """A computation would exceed the memory budget it was given."""


class DamagedFileError(FewclipError, ValueError):
    """A file fewclip wrote no longer holds what it wrote: a checksum mismatch, an unreadable
    file, values that are not finite, or files of one folder that contradict each other. The
    message names the file, what is wrong and how to rebuild it."""


class OutputFolderError(FewclipError, FileExistsError):
    """An output folder cannot be written without losing or mixing files fewclip did not write
    (a non-empty foreign folder, an existing output without ``overwrite``, a folder inside the
    input data)."""


class UnknownNameError(FewclipError, KeyError):
    """A name (method, backbone, dataset, preset) that fewclip does not know; the message lists
    the close matches and the valid names."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class UnknownParameterError(FewclipError, TypeError):
    """A hyper-parameter that the method does not have; the message lists the valid ones."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'tip-adapter'?)"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=2, cutoff=0.6)
    lookup = {c.lower(): c for c in choices}
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(lookup[c]) for c in close) + "?)"


def count_of(n: int, noun: str) -> str:
    """``"1 image"``, ``"3 images"``: a count with its noun, plural unless it is one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
