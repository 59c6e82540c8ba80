"""User-facing errors.

Anything the user can cause (a bad name, a missing file, a wrong input shape) raises :class:`CnnzooError`
(or a subclass). The command line turns it into one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations


class CnnzooError(Exception):
    """An error caused by the user's input, reported as one line: ``error: <message>``."""

    exit_code: int = 2


class InputShapeError(CnnzooError, ValueError):
    """A tensor of the wrong shape was given to a model (wrong channels, or too small / wrong spatial size)."""


class DiskError(CnnzooError):
    """A file or folder could not be read or written (no permission, a full disk, a read-only filesystem): exit 1,
    the README's status for an OS error, as one line like every other error."""

    exit_code = 1
