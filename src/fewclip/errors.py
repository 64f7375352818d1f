"""The root of fewclip's deliberate errors.

Every error fewclip raises on purpose derives from :class:`FewclipError`, so a caller can catch
them all at once, and the command line can tell a user error (a clear one-line message) from a
bug (a traceback). Each subclass also derives from the built-in exception a Python user would
expect (``FileExistsError``, ``ValueError`` ...), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = ["FewclipError", "OutputFolderError"]


class FewclipError(Exception):
    """An error fewclip raises on purpose: the message names the input, what was expected, what
    was found, and the option that fixes it."""


class OutputFolderError(FewclipError, FileExistsError):
    """An output folder cannot be written without losing or mixing files fewclip did not write
    (a non-empty foreign folder, an existing output without ``overwrite``, a folder inside the
    input data)."""
