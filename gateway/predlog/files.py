"""The prediction log's files: one open file per (model, version), rotated by size and age.

Layout: ``<log_dir>/<model>/<version>/<UTC start>-<pid>-<n>.jsonl`` (``.jsonl.gz`` once rotated,
when compression is on). A new file is started at every open, never appended to: a torn last
line left by a crash stays at the end of its own file, where readers skip it.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from gateway.auth import sync_directory

log = logging.getLogger(__name__)


class WriteError(OSError):
    """A write that failed part-way: ``written`` bytes of the data (whole lines) are in the file."""

    def __init__(self, cause: OSError, written: int) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.written = written


class LogFile:
    """The current file of one (model, version), written with whole lines only."""

    def __init__(
        self,
        directory: Path,
        *,
        rotate_bytes: int,
        rotate_s: float,
        compress: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._rotate_bytes = rotate_bytes
        self._rotate_s = rotate_s
        self._compress = compress
        self._clock = clock
        self._fd: int | None = None
        self._path: Path | None = None
        self._opened = 0.0
        self._size = 0
        self._count = 0

    def write(self, data: bytes) -> None:
        """Append ``data`` (complete lines); OSError when the sink fails (the file is then dropped).

        A failure after part of the data reached the file (a disk filling up mid-write) raises
        :class:`WriteError` with how many bytes of whole lines are in the file: the caller counts
        those lines as written, neither dropped nor written again. A torn line at the end is cut
        off (``ftruncate``), so the file holds whole lines only.
        """
        now = self._clock()
        if self._fd is not None and (self._size >= self._rotate_bytes or now - self._opened >= self._rotate_s):
            self.rotate()
        if self._fd is None:
            self._open(now)
        fd = self._fd
        assert fd is not None
        done = 0
        try:
            view = memoryview(data)
            while done < len(data):
                done += os.write(fd, view[done:])
        except OSError as exc:
            whole = data.rfind(b"\n", 0, done) + 1  # lines never hold a raw newline (JSON escapes it)
            if whole < done:
                try:
                    os.ftruncate(fd, self._size + whole)
                except OSError:
                    log.warning("could not cut a torn line off %s: readers will skip it", self._path)
            self._size += whole
            self._abandon()
            raise WriteError(exc, whole) from exc
        self._size += len(data)

    def _open(self, now: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        path = self.directory / f"{stamp}-{os.getpid()}-{self._count:04d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._path, self._opened, self._size = path, now, 0

    def _abandon(self) -> None:
        """After a failed write: close what is open; the next write starts a new file.

        A file left empty is removed: a writer retrying on a full disk (``block``) would
        otherwise leave one empty file per try.
        """
        if self._fd is not None:
            with contextlib.suppress(OSError):  # the sink failed already; nothing more to learn
                os.close(self._fd)
            self._fd = None
            if self._size == 0 and self._path is not None:
                with contextlib.suppress(OSError):
                    self._path.unlink()

    def rotate(self) -> None:
        """Close the current file (synced), compressing it when configured."""
        if self._fd is None:
            return
        fd, path = self._fd, self._path
        self._fd = None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._compress and path is not None and self._size:
            _gzip(path)

    def sync(self) -> None:
        """Flush the current file to disk."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the current file (synced, not compressed: it may be the newest data)."""
        if self._fd is not None:
            fd = self._fd
            self._fd = None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _gzip(path: Path) -> None:
    """Replace ``path`` by ``path.gz``, durably, with the plain file's permissions.

    The compressed data goes to a hidden temporary name (no reader's ``*.jsonl*`` matches it),
    is synced, renamed into place and the directory synced, and only then is the plain file
    removed: a crash or a full disk at any point leaves every record in at least one file.
    """
    target = path.with_name(path.name + ".gz")
    partial = path.with_name("." + path.name.removesuffix(".jsonl") + ".compressing")
    renamed = False
    try:
        mode = os.stat(path).st_mode & 0o777
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as raw:
            os.fchmod(raw.fileno(), mode)  # not the umask's default: the log holds inputs
            with path.open("rb") as source, gzip.GzipFile(path.name, "wb", 1, raw) as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(partial, target)
        renamed = True
        sync_directory(path.parent)  # the .gz is durable under its name before the original goes
        path.unlink()
        sync_directory(path.parent)
    except OSError as exc:  # the uncompressed file stays: nothing is lost, nothing is doubled
        log.warning("could not compress %s: %s", path.name, exc)
        partial.unlink(missing_ok=True)
        if renamed and path.exists():
            target.unlink(missing_ok=True)
