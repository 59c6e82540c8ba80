"""Writing files so that a crash or kill at any moment leaves either the old file or the new one, never half.

Each write goes to a temporary file ``.<name>.<pid>.<random>.tmp`` in the destination's folder, is flushed and fsynced,
then ``os.replace``-d over the destination (atomic on POSIX and Windows), and the folder is fsynced so the rename
itself survives a power cut. A write that fails removes its temporary file; a kill cannot, so whoever owns the
folder removes what :func:`temp_files` finds at its next start. A folder that several processes may write at once
(the data cache) removes only the files whose writer is gone (:func:`abandoned`: the pid in the name).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def _mode_for(path: Path) -> int:
    """The replaced file's permission bits, or 0o666 less the process umask for a new file."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` when the block ends without an exception (and is removed if not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; the result gets the mode a plain open() would give (or the old file's).
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every platform / filesystem)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch  # here, not at the top: the config writes its files through this module without torch

    path = Path(path)
    with _replacing(path) as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch reports a failed write (a full disk) as RuntimeError, not OSError
            error = _write_error(path, e)
            if error.errno != errno.ENOSPC and not any(w in str(e).lower() for w in ("writ", "unexpected pos")):
                raise
            raise error from None


def _write_error(path: Path, e: BaseException) -> OSError:
    """The OSError behind a writer's failure (``ENOSPC`` when the filesystem is full), so it ends as an OS error."""
    import shutil

    try:
        full = shutil.disk_usage(path.parent).free < (1 << 20)
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    text = str(e).strip()
    return OSError(errno.EIO, f"write failed ({text.splitlines()[0][:200] if text else type(e).__name__})", str(path))


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path``, atomically."""
    with _replacing(Path(path)) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_figure(fig: Any, path: str | Path, *, dpi: int = 100) -> None:
    """Save a matplotlib ``Figure`` as PNG to ``path``, atomically (every chart cnnzoo draws goes through here)."""
    from matplotlib.text import Text

    # Class names and file names are text, never mathtext ("$x$" would be parsed); a log axis's own tick labels are
    # mathtext (10^3, written by its formatter) and stay so.
    ticks = {
        label
        for ax in fig.axes
        for axis in (ax.xaxis, ax.yaxis)
        if axis.get_scale() == "log"
        for tick in (*axis.get_major_ticks(), *axis.get_minor_ticks())
        for label in (tick.label1, tick.label2)
    }
    for text in fig.findobj(Text):
        if text not in ticks:
            text.set_parse_math(False)
    with _replacing(Path(path)) as f:
        fig.savefig(f, format="png", dpi=dpi)


def temp_files(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """The temporary files that interrupted atomic writes of ``folder/<name>`` (for each of ``names``) left behind."""
    folder = Path(folder)
    return sorted(p for name in names for p in folder.glob(f".{name}.*.tmp") if p.is_file())


def abandoned(tmp: Path, name: str) -> bool | None:
    """Whether the temporary file ``tmp`` of an atomic write of ``name`` was left by a process that no longer runs
    (True), by one that still runs (False: it may be writing it now), or cannot say (None: a name without a pid,
    from an older version)."""
    pid = tmp.name[len(name) + 2 :].partition(".")[0]  # ".<name>." then "<pid>.<random>.tmp"
    if not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # another user's process: it runs
        return False
    except (ProcessLookupError, OverflowError):  # no process has (or can have) this pid
        return True
    return False


def check_regular(path: str | Path, what: str = "file") -> None:
    """Refuse, before it is opened, a path that is not a regular file (a FIFO would block the reader forever, a
    device would stream without end, a folder cannot be read): one line naming it. A missing path passes (the
    caller says what is missing)."""
    import stat

    from cnnzoo.errors import CnnzooError

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise CnnzooError(f"{path}: is {kind}, not a {what}")


def read_regular(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` (one line if it is larger, or is a FIFO, device or
    folder: checked before reading, and again on the opened descriptor so a swap in between cannot block)."""
    import stat

    from cnnzoo.errors import CnnzooError

    check_regular(path, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CnnzooError(f"{path}: is not a regular file, not a {what}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CnnzooError(f"{path}: more than {limit:,} bytes, too large for a {what}")
    return data
