"""``study pack`` / ``study unpack``: a study folder's resumable state as numbered parts of at most 16 MiB each.

Why: long work on a borrowed GPU machine is cut off after minutes, and what comes back from it is a handful of
files of at most 16 MiB. A study stopped there (SIGTERM: every run saves ``last.pt`` at its current step) is packed,
carried to the next machine, unpacked, and the same command resumes it with nothing lost.

What is packed: every file of the folder except the checkpoints of finished runs (their ``report.json`` and
``metrics.jsonl`` are all the study reads back) and TensorBoard event files; unfinished runs keep ``last.pt`` and
``best.pt``. The parts are one gzip'd tar stream cut at ``part_size`` bytes (so one checkpoint larger than a part
is no problem), named ``<folder>-NNN-of-MMM.tgz.part``. Unpacking checks that every part is there, extracts into a
temporary folder with tarfile's ``data`` filter (no links out, no devices, no absolute paths), and only then moves
the files into place: a damaged or missing part changes nothing.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from cnnzoo.errors import CnnzooError

PART_SIZE = 16 * 2**20
PART = re.compile(r"^(?P<stem>.+)-(?P<i>\d{3})-of-(?P<n>\d{3})\.tgz\.part$")


def packed_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that a resume needs or the study wrote, relative to it, sorted."""
    finished = {p.parent for p in folder.rglob("report.json")}
    keep = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or "tensorboard" in rel.parts or path.name.endswith(".tmp"):
            continue
        if path.suffix == ".pt" and path.parent in finished:
            continue
        keep.append(rel)
    return keep


class _Parts(io.RawIOBase):
    """A write-only stream that spills into ``<stem>-NNN.tmp`` files of at most ``size`` bytes each."""

    def __init__(self, out: Path, stem: str, size: int) -> None:
        self.out, self.stem, self.size = out, stem, size
        self.paths: list[Path] = []
        self._file = None
        self._left = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            if self._left == 0:
                self._next()
            n = min(self._left, len(view))
            self._file.write(view[:n])
            self._left -= n
            view = view[n:]
        return len(data)

    def _next(self) -> None:
        if self._file is not None:
            self._file.close()
        self.paths.append(self.out / f".{self.stem}-{len(self.paths) + 1:03d}.tmp")
        self._file = open(self.paths[-1], "wb")  # noqa: SIM115 (closed in _next / close)
        self._left = self.size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def pack(folder: str | Path, out: str | Path, *, part_size: int = PART_SIZE) -> list[Path]:
    """Pack ``folder``'s resumable state into parts of at most ``part_size`` bytes in ``out``; returns their paths."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise CnnzooError(f"{folder}: no such study folder")
    if part_size < 1024:
        raise CnnzooError(f"part size must be at least 1 KiB, got {part_size} bytes")
    files = packed_files(folder)
    if not files:
        raise CnnzooError(f"{folder}: nothing to pack (no files)")
    out.mkdir(parents=True, exist_ok=True)
    stem = folder.resolve().name
    parts = _Parts(out, stem, part_size)
    try:
        with (
            gzip.GzipFile(fileobj=parts, mode="wb", compresslevel=1, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):
            for rel in files:
                tar.add(folder / rel, arcname=rel.as_posix(), recursive=False)
        parts.close()
    except BaseException:
        parts.close()
        for p in parts.paths:
            p.unlink(missing_ok=True)
        raise
    n = len(parts.paths)
    if n > 999:
        raise CnnzooError(f"{folder} needs {n} parts of {part_size} bytes: more than 999")
    final = [out / f"{stem}-{i:03d}-of-{n:03d}.tgz.part" for i in range(1, n + 1)]
    for tmp, path in zip(parts.paths, final, strict=True):
        tmp.replace(path)
    return final


def find_parts(source: str | Path) -> list[Path]:
    """The parts of one packed study: ``source`` is a part file or a folder holding the parts of exactly one."""
    source = Path(source)
    found = [source] if source.is_file() else sorted(source.glob("*.tgz.part")) if source.is_dir() else []
    matches = [(p, PART.match(p.name)) for p in found]
    if not found or any(m is None for _, m in matches):
        raise CnnzooError(f"{source}: no packed study parts (<name>-NNN-of-MMM.tgz.part) found")
    stems = {(m["stem"], m["n"]) for _, m in matches}
    if len(stems) > 1:
        raise CnnzooError(f"{source}: parts of more than one packed study: {', '.join(sorted(s for s, _ in stems))}")
    stem, n = stems.pop()
    folder = found[0].parent
    parts = [folder / f"{stem}-{i:03d}-of-{n}.tgz.part" for i in range(1, int(n) + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise CnnzooError(f"{folder}: missing part(s) {', '.join(missing)} of {int(n)}")
    return parts


class _Joined(io.RawIOBase):
    """A read-only stream over the parts, one after the other."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._file = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = open(self._paths.pop(0), "rb")  # noqa: SIM115 (closed below and in close)
            n = self._file.readinto(buf)
            if n:
                return n
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _same(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def unpack(source: str | Path, folder: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Unpack the parts in ``source`` into ``folder``; returns the files written (relative to ``folder``).

    A file already in ``folder`` with other contents is replaced only with ``overwrite`` (else one-line error,
    before anything is written)."""
    parts, folder = find_parts(source), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=folder) as tmp:
        try:
            with (
                _Joined(parts) as raw,
                gzip.GzipFile(fileobj=io.BufferedReader(raw), mode="rb") as gz,
                tarfile.open(fileobj=gz, mode="r|") as tar,
            ):
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise CnnzooError(f"{parts[0].parent}: damaged packed study ({type(e).__name__}: {e})") from None
        files = sorted(p.relative_to(tmp) for p in Path(tmp).rglob("*") if p.is_file())
        clash = [f for f in files if (folder / f).exists() and not _same(folder / f, Path(tmp) / f)]
        if clash and not overwrite:
            raise CnnzooError(
                f"{folder / clash[0]} exists with other contents ({len(clash)} such file(s)): "
                "add --overwrite to replace them, or unpack into another folder"
            )
        for f in files:
            (folder / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / f), folder / f)
    return files
