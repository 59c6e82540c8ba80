"""The decoded-data cache: one file per image folder under ``$CNNZOO_CACHE_DIR`` (default ``~/.cache/cnnzoo``).

Decoding 60,000 JPEGs takes a while on a small machine; the result (uint8 tensors plus the folder's index) is saved
so the second run starts in seconds. Each file stores a header (``format``, ``version``, ``key``) next to the
payload; ``key`` is a hash of the source's content as the file system describes it (every file's relative path,
size and mtime, plus the decode options), so adding, removing, replacing or touching a file gives a different key.
A file with another version or key, or one that is truncated or unreadable, is rebuilt, never used (a log line says
why). Writes are atomic (temporary file, fsync, ``os.replace``), so an interrupted run leaves the old file or none.
Loading uses ``torch.load(weights_only=True)``: a cache file cannot run code.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from cnnzoo.atomic import abandoned, save_atomic, temp_files
from cnnzoo.data.bundle import default_home
from cnnzoo.errors import shown

log = logging.getLogger("cnnzoo.data")

FORMAT = "cnnzoo-decoded"
VERSION = 2  # bump when the payload layout or the decoding changes (2: 16-bit PNGs rescaled, WebP as grey)


def cache_dir() -> Path:
    """``$CNNZOO_CACHE_DIR`` or ``~/.cache/cnnzoo``."""
    return Path(os.environ.get("CNNZOO_CACHE_DIR") or default_home())


def content_key(entries: list[tuple[str, int, int]], *extra: object) -> str:
    """sha256 over the sorted (relative path, size, mtime_ns) entries, the cache version and ``extra`` options."""
    h = hashlib.sha256(f"{FORMAT} v{VERSION} {extra!r}\n".encode())
    for rel, size, mtime in sorted(entries):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))  # file names need not be UTF-8
    return h.hexdigest()


def cache_path(source: Path, kind: str) -> Path:
    """One cache file per source folder (the folder's absolute path names it; its content keys what is inside)."""
    where = hashlib.sha256(os.fsencode(source.resolve())).hexdigest()[:16]  # the path's bytes: need not be UTF-8
    return cache_dir() / kind / f"{shown(source.resolve().name)}-{where}.pt"


def load_or_build(path: Path, key: str, build: Callable[[], dict], check: Callable[[dict], bool] | None = None) -> dict:
    """The payload stored at ``path`` for ``key``; when absent, stale, truncated, of another version or failing
    ``check`` (a hand-edited file), ``build()`` it and store it atomically. A cache that cannot be written (read-only
    disk) only costs a log line. What killed writes left here goes first (:func:`_remove_stale_temps`)."""
    _remove_stale_temps(path)
    payload = _read(path, key)
    if payload is not None and check is not None and not _passes(check, payload):
        log.info("decoded cache %s does not hold what its header says; rebuilding", path)
        payload = None
    if payload is not None:
        return payload
    payload = build()
    try:
        save_atomic({"format": FORMAT, "version": VERSION, "key": key, "payload": payload}, path)
    except OSError as e:
        log.warning("could not write the decoded cache %s (%s); continuing without it", path, e)
    return payload


def _remove_stale_temps(path: Path, age: float = 300.0) -> None:
    """The temporary files that killed cache writes left beside ``path``: each whose writer no longer runs (the pid
    in its name); one without a pid (an older version's) once untouched for ``age`` seconds. Another process may be
    writing the same cache right now: its file stays."""
    import time

    for stale in temp_files(path.parent, [path.name]):
        try:
            gone = abandoned(stale, path.name)
            if gone or (gone is None and time.time() - stale.stat().st_mtime > age):
                stale.unlink()
        except OSError:
            pass


def _passes(check: Callable[[dict], bool], payload: dict) -> bool:
    try:
        return bool(check(payload))
    except Exception:  # a check reading a malformed payload may raise anything; all mean "rebuild"
        return False


def _read(path: Path, key: str) -> dict | None:
    import torch

    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage, unpickling refused: all mean "rebuild"
        log.info("decoded cache %s is unreadable (%s: %s); rebuilding", path, type(e).__name__, e)
        return None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != VERSION:
        log.info("decoded cache %s is from another version; rebuilding", path)
        return None
    if obj.get("key") != key:
        log.info("decoded cache %s is stale (the source changed); rebuilding", path)
        return None
    if not isinstance(obj.get("payload"), dict):
        log.info("decoded cache %s holds no payload; rebuilding", path)
        return None
    return obj["payload"]
