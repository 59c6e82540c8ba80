"""User-facing errors.

Anything the user can cause (a bad name, a missing file, a wrong input shape) raises :class:`CnnzooError`
(or a subclass). The command line turns it into one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import os


class CnnzooError(Exception):
    """An error caused by the user's input, reported as one line: ``error: <message>``."""

    exit_code: int = 2


class InputShapeError(CnnzooError, ValueError):
    """A tensor of the wrong shape was given to a model (wrong channels, or too small / wrong spatial size)."""


class DiskError(CnnzooError):
    """A file or folder could not be read or written (no permission, a full disk, a read-only filesystem): exit 1,
    the README's status for an OS error, as one line like every other error."""

    exit_code = 1


def is_utf8(name: str) -> bool:
    """Whether a name Python decoded from the file system (bytes that are not UTF-8 become ``surrogateescape``
    surrogates) is valid UTF-8, so that it can be printed and stored as text."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: str | os.PathLike) -> str:
    """A file name or path safe to print and store: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
