"""``study pack`` / ``study unpack``: a study folder's resumable state as numbered parts of at most 16 MiB each.

Why: long work on a borrowed GPU machine is cut off after minutes, and what comes back from it is a handful of
files of at most 16 MiB. A study stopped there (SIGTERM: every run saves ``last.pt`` at its current step) is packed,
carried to the next machine, unpacked, and the same command resumes it with nothing lost.

What is packed: every file of the folder except the checkpoints of finished runs (their ``report.json`` and
``metrics.jsonl`` are all the study reads back) and TensorBoard event files; unfinished runs keep ``last.pt`` and
``best.pt``. The parts are one gzip'd tar stream cut at ``part_size`` bytes (so one checkpoint larger than a part
is no problem), named ``<folder>-NNN-of-MMM.tgz.part``.

Every part proves itself: it starts with a fixed-size header (``HEADER`` bytes: the pack's random id, the part's
number, the count, the payload's length and SHA-256), and the tar stream starts with a manifest of every file's size
and SHA-256. Unpacking checks every part's header and checksum (one pack, numbered as named, nothing missing or
damaged) before it decompresses anything, extracts with tarfile's ``data`` filter (no links out, no devices, no
absolute paths) into a temporary folder, only the manifest's files at the manifest's sizes, checks every file's
checksum, and only then moves the files into place (the whole folder renamed when it is new): a damaged, missing,
reordered or foreign part changes nothing. Temporary files that a kill left behind are removed by the next pack or
unpack that uses the same place.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import uuid
import zlib
from pathlib import Path

from cnnzoo.errors import CnnzooError

PART_SIZE = 16 * 2**20
MAX_PART_SIZE = 2**40
HEADER = 512  # bytes at the start of every part: b"CNNZOO-PART 1 " + JSON, padded with spaces, then a newline
MAGIC = b"CNNZOO-PART 1 "
MANIFEST = ".cnnzoo-pack.json"  # the tar stream's first member: {"pack": id, "files": {path: {size, sha256}}}
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
    """A write-only stream that spills into ``.<stem>-NNN.tmp`` files of at most ``size`` bytes each: a ``HEADER``
    reserved at the start of each (written by :meth:`seal` once the count is known), then the payload."""

    def __init__(self, out: Path, stem: str, size: int) -> None:
        self.out, self.stem, self.size = out, stem, size
        self.paths: list[Path] = []
        self.hashes: list = []
        self.lengths: list[int] = []
        self._file = None
        self._left = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        while view:
            if self._left == 0:
                self._next()
            n = min(self._left, len(view))
            self._file.write(view[:n])
            self.hashes[-1].update(view[:n])
            self.lengths[-1] += n
            self._left -= n
            view = view[n:]
        return len(data)

    def _next(self) -> None:
        if self._file is not None:
            self._file.close()
        self.paths.append(self.out / f".{self.stem}-{len(self.paths) + 1:03d}.tmp")
        self.hashes.append(hashlib.sha256())
        self.lengths.append(0)
        self._file = open(self.paths[-1], "wb")  # noqa: SIM115 (closed in _next / close)
        self._file.write(b"\0" * HEADER)
        self._left = self.size - HEADER

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()

    def seal(self, pack_id: str) -> None:
        """Write each part's header (the count is known now) and fsync it."""
        n = len(self.paths)
        for i, (path, digest, length) in enumerate(zip(self.paths, self.hashes, self.lengths, strict=True), 1):
            info = {"pack": pack_id, "index": i, "count": n, "bytes": length, "sha256": digest.hexdigest()}
            with open(path, "r+b") as f:
                f.write(_header(info))
                f.flush()
                os.fsync(f.fileno())


def _header(info: dict) -> bytes:
    text = MAGIC + json.dumps(info, sort_keys=True).encode()
    return text.ljust(HEADER - 1, b" ") + b"\n"


class _Hashing(io.RawIOBase):
    """A file read through while hashing it (what tarfile reads is what the manifest promised)."""

    def __init__(self, f) -> None:
        self._f, self.digest = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self._f.readinto(buf)
        self.digest.update(memoryview(buf)[:n])
        return n


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_stale(folder: Path, pattern: str) -> None:
    """What a kill left behind at ``folder`` (temporary files and folders of an interrupted pack or unpack)."""
    for path in folder.glob(pattern) if folder.is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def pack(folder: str | Path, out: str | Path, *, part_size: int = PART_SIZE) -> list[Path]:
    """Pack ``folder``'s resumable state into parts of at most ``part_size`` bytes in ``out``; returns their paths."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise CnnzooError(f"{folder}: no such study folder")
    if not 2 * HEADER <= part_size <= MAX_PART_SIZE:
        raise CnnzooError(f"part size must be between 1 KiB and 1 TiB, got {part_size} bytes")
    files = packed_files(folder)
    if not files:
        raise CnnzooError(f"{folder}: nothing to pack (no files)")
    out.mkdir(parents=True, exist_ok=True)
    stem = folder.resolve().name
    _remove_stale(out, f".{glob_escape(stem)}-[0-9][0-9][0-9].tmp")
    pack_id = uuid.uuid4().hex
    manifest = {"pack": pack_id, "files": {}}
    for rel in files:
        manifest["files"][rel.as_posix()] = {"size": (folder / rel).stat().st_size, "sha256": _sha256(folder / rel)}
    blob = json.dumps(manifest, indent=1).encode()
    parts = _Parts(out, stem, part_size)
    try:
        with (
            gzip.GzipFile(fileobj=parts, mode="wb", compresslevel=1, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(blob), 0o644
            tar.addfile(info, io.BytesIO(blob))
            for rel in files:
                entry = manifest["files"][rel.as_posix()]
                with open(folder / rel, "rb") as f:
                    info = tar.gettarinfo(fileobj=f, arcname=rel.as_posix())
                    if info.size != entry["size"]:
                        raise CnnzooError(f"{folder / rel}: changed while it was packed (is the study running?)")
                    reader = _Hashing(f)
                    tar.addfile(info, io.BufferedReader(reader))
                    if reader.digest.hexdigest() != entry["sha256"]:
                        raise CnnzooError(f"{folder / rel}: changed while it was packed (is the study running?)")
        parts.close()
        n = len(parts.paths)
        if n > 999:
            raise CnnzooError(f"{folder} needs {n} parts of {part_size} bytes: more than 999")
        parts.seal(pack_id)
    except BaseException:
        parts.close()
        for p in parts.paths:
            p.unlink(missing_ok=True)
        raise
    final = [out / f"{stem}-{i:03d}-of-{n:03d}.tgz.part" for i in range(1, n + 1)]
    for tmp, path in zip(parts.paths, final, strict=True):
        tmp.replace(path)
    return final


def glob_escape(text: str) -> str:
    """``text`` as a literal in a glob pattern."""
    return re.sub(r"([*?[])", r"[\1]", text)


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
    if int(n) < 1 or any(not 1 <= int(m["i"]) <= int(n) for _, m in matches):
        bad = next(p.name for p, m in matches if not 1 <= int(m["i"]) <= int(n))
        raise CnnzooError(f"{source}: {bad} is numbered outside 1..{int(n)}")
    folder = found[0].parent
    parts = [folder / f"{stem}-{i:03d}-of-{n}.tgz.part" for i in range(1, int(n) + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise CnnzooError(f"{folder}: missing part(s) {', '.join(missing)} of {int(n)}")
    return parts


def verify_parts(parts: list[Path]) -> str:
    """Check every part's header and checksum before anything is decompressed: one pack (the same id), numbered as
    named, each payload of the stated length and SHA-256. Returns the pack's id; one line naming the first bad part."""
    pack_id = None
    for i, path in enumerate(parts, 1):
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER)
                if len(head) != HEADER or not head.startswith(MAGIC) or not head.endswith(b"\n"):
                    raise CnnzooError(
                        f"{path}: no cnnzoo part header (damaged, or packed by a cnnzoo without checksums: "
                        "pack the study again)"
                    )
                try:
                    info = json.loads(head[len(MAGIC) :].decode("ascii"))
                    kinds = {"pack": str, "index": int, "count": int, "bytes": int, "sha256": str}
                    ok = isinstance(info, dict) and all(isinstance(info.get(k), t) for k, t in kinds.items())
                except (UnicodeDecodeError, ValueError):
                    ok = False
                if not ok:
                    raise CnnzooError(f"{path}: damaged part header")
                if pack_id is None:
                    pack_id = info["pack"]
                elif info["pack"] != pack_id:
                    raise CnnzooError(f"{path}: a part of another pack than {parts[0].name} (parts of two packs mixed)")
                if info["index"] != i or info["count"] != len(parts):
                    raise CnnzooError(
                        f"{path}: holds part {info['index']} of {info['count']}, not {i} of {len(parts)} "
                        "(renamed or misnumbered)"
                    )
                digest, length = hashlib.sha256(), 0
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                    length += len(block)
        except OSError as e:
            raise CnnzooError(f"{path}: cannot read ({e.strerror or e})") from None
        if length != info["bytes"] or digest.hexdigest() != info["sha256"]:
            raise CnnzooError(f"{path}: damaged (its checksum does not match: truncated or changed since packing)")
    return pack_id


class _Joined(io.RawIOBase):
    """A read-only stream over the parts' payloads (each after its header), one after the other."""

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
                self._file.seek(HEADER)
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


def _read_manifest(tar: tarfile.TarFile, pack_id: str, where: Path) -> dict[str, dict]:
    member = tar.next()
    if member is None or member.name != MANIFEST or not member.isfile() or member.size > 64 << 20:
        raise CnnzooError(f"{where}: damaged packed study (no manifest first)")
    try:
        manifest = json.loads(tar.extractfile(member).read().decode("utf-8"))
        files = manifest["files"]
        ok = manifest["pack"] == pack_id and all(
            isinstance(k, str) and isinstance(v["size"], int) and v["size"] >= 0 and isinstance(v["sha256"], str)
            for k, v in files.items()
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise CnnzooError(f"{where}: damaged packed study (its manifest is not this pack's)")
    return files


def unpack(source: str | Path, folder: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Unpack the parts in ``source`` into ``folder``; returns the files written (relative to ``folder``).

    Every part and every file is checked against the checksums written at pack time before anything is written
    into ``folder``. A file already in ``folder`` with other contents is replaced only with ``overwrite`` (else
    one-line error, before anything is written)."""
    parts, folder = find_parts(source), Path(folder)
    where = parts[0].parent
    pack_id = verify_parts(parts)
    tmp = _unpack_dir(folder)
    try:
        content = tmp / "content"
        content.mkdir()
        expected = _extract(parts, pack_id, content, folder.parent, where)
        files = _check_extracted(content, expected, where)
        _install(files, content, folder, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def _unpack_dir(folder: Path) -> Path:
    """A new temporary folder beside ``folder`` to extract into (same file system: its files move in by rename),
    after removing what an interrupted unpack left there."""
    if folder.exists() and not folder.is_dir():
        raise CnnzooError(f"{folder}: exists and is not a folder")
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnzooError(f"{parent}: cannot create the folder ({e.strerror or e})") from None
    _remove_stale(parent, f".{glob_escape(folder.name)}.unpack-*.tmp")
    _remove_stale(folder, ".unpack-*")  # what older versions extracted into
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.unpack-", suffix=".tmp", dir=parent))


def _extract(parts: list[Path], pack_id: str, content: Path, parent: Path, where: Path) -> dict[str, dict]:
    """Stream the joined parts into ``content``, each member checked against the manifest (name, kind, size) first
    and the disk space for all of them before the first; returns the manifest's files."""
    try:
        with (
            _Joined(parts) as raw,
            gzip.GzipFile(fileobj=io.BufferedReader(raw), mode="rb") as gz,
            tarfile.open(fileobj=gz, mode="r|") as tar,
        ):
            expected = _read_manifest(tar, pack_id, where)
            need = sum(v["size"] for v in expected.values())
            if need > shutil.disk_usage(parent).free:
                raise OSError(28, f"No space left on device ({need:,} bytes needed)", str(parent))
            for member in tar:
                if member.name == MANIFEST:  # tarfile's iteration starts again at the member read above
                    continue
                entry = expected.get(member.name)
                if entry is None or not member.isfile() or member.size != entry["size"]:
                    raise CnnzooError(f"{where}: damaged packed study ({member.name!r} is not in its manifest)")
                tar.extract(member, content, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CnnzooError(f"{where}: damaged packed study ({type(e).__name__}: {e})") from None
    return expected


def _check_extracted(content: Path, expected: dict[str, dict], where: Path) -> list[Path]:
    """The files extracted into ``content`` (relative, sorted), once they are exactly the manifest's, checksums
    included."""
    files = sorted(p.relative_to(content) for p in content.rglob("*") if p.is_file())
    names = {f.as_posix() for f in files}
    if names != set(expected):
        lost = sorted(set(expected) - names)
        raise CnnzooError(f"{where}: damaged packed study ({len(lost)} file(s) of its manifest missing)")
    for f in files:
        if _sha256(content / f) != expected[f.as_posix()]["sha256"]:
            raise CnnzooError(f"{where}: damaged packed study ({f} does not match its checksum)")
    return files


def _install(files: list[Path], content: Path, folder: Path, *, overwrite: bool) -> None:
    """Move the checked ``files`` from ``content`` into ``folder``: the whole folder by one rename when it is new,
    else file by file, after refusing (before moving any) files there with other contents unless ``overwrite``."""
    if not folder.exists():
        os.rename(content, folder)  # one rename: the folder appears whole or not at all
        return
    clash = [f for f in files if (folder / f).exists() and not _same(folder / f, content / f)]
    if clash and not overwrite:
        raise CnnzooError(
            f"{folder / clash[0]} exists with other contents ({len(clash)} such file(s)): "
            "add --overwrite to replace them, or unpack into another folder"
        )
    for f in files:
        (folder / f).parent.mkdir(parents=True, exist_ok=True)
        os.replace(content / f, folder / f)
