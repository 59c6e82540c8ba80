"""One writer per run directory: an OS lock (``flock``) on ``RUN_DIR/.cnnzoo-lock``.

Whoever writes into a run directory (a new run, ``--overwrite``, ``--resume``, a study training into it) holds the
lock for as long as it writes. A second writer gets one line naming the holder (process id, host, command, start
time, as the holder wrote them into the lock file). The lock itself is the kernel's ``flock``, not the file's
contents: a process that dies, however it dies, releases it, so a lock file left by a killed process is stale by
construction and the next writer simply takes it over.

The holder removes the lock file when it lets go, so a directory nobody writes holds no lock file. Removing a lock
file is safe against a writer that opened it just before: a writer that got the lock checks that the file it
locked is still the one at the path, and starts again if not. Locks are re-entrant within one process (a resume
holds the lock from the first read of ``last.pt`` to the end, through ``run_training``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cnnzoo.errors import CnnzooError, DiskError

LOCK_NAME = ".cnnzoo-lock"

_held: dict[str, list] = {}  # realpath of the run directory -> [fd, count]


def _key(run_dir: Path) -> str:
    return os.path.realpath(run_dir)


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, as it wrote itself into the file (best effort: the file may be mid-write)."""
    try:
        info = json.loads(path.read_bytes()[:4096].decode("utf-8", "replace"))
        command = " ".join(str(a) for a in info.get("command", []))[:120]
        return f"process {info['pid']} on {info['host']} since {info['started']} ({command})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "another process"


def acquire(run_dir: str | Path) -> None:
    """Take the run directory's lock (the folder must exist), or raise one line naming the holder."""
    run_dir = Path(run_dir)
    key = _key(run_dir)
    if key in _held:
        _held[key][1] += 1
        return
    path = run_dir / LOCK_NAME
    for _ in range(20):
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), 0o644
            )
        except OSError as e:
            raise DiskError(f"{run_dir}: cannot lock the run directory ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CnnzooError(
                f"{run_dir} is in use by {_holder(path)}: one writer at a time (wait for it to end)"
            ) from None
        except OSError as e:
            os.close(fd)
            raise DiskError(f"{run_dir}: cannot lock the run directory ({e.strerror or e})") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file between our open and our lock: lock the new one
            os.close(fd)
            continue
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": ["cnnzoo", *sys.argv[1:]] if sys.argv else [],
        }
        with contextlib.suppress(OSError):  # who holds it is a courtesy to the next writer; the lock is the flock
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        _held[key] = [fd, 1]
        return
    raise CnnzooError(f"{run_dir}: cannot lock the run directory (its lock file keeps changing)")


def release(run_dir: str | Path) -> None:
    """Let go of a lock taken by :func:`acquire` (the last release removes the lock file, then unlocks)."""
    key = _key(Path(run_dir))
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[key]
    with contextlib.suppress(OSError):
        os.unlink(Path(run_dir) / LOCK_NAME)
    os.close(entry[0])  # closing the last descriptor releases the flock


def holds(run_dir: str | Path) -> bool:
    """Whether this process holds the lock of ``run_dir``."""
    return _key(Path(run_dir)) in _held


@contextlib.contextmanager
def hold(run_dir: str | Path, *, enabled: bool = True) -> Iterator[None]:
    """``acquire`` for the block (a no-op when ``enabled`` is false, e.g. on the DDP ranks other than 0)."""
    if not enabled:
        yield
        return
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)
