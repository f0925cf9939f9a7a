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

log = logging.getLogger(__name__)


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
        """Append ``data`` (complete lines); OSError when the sink fails (the file is then dropped)."""
        now = self._clock()
        if self._fd is not None and (self._size >= self._rotate_bytes or now - self._opened >= self._rotate_s):
            self.rotate()
        if self._fd is None:
            self._open(now)
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            self._abandon()
            raise
        self._size += len(data)

    def _open(self, now: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        path = self.directory / f"{stamp}-{os.getpid()}-{self._count:04d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._path, self._opened, self._size = path, now, 0

    def _abandon(self) -> None:
        """After a failed write: close what is open; the next write starts a new file."""
        if self._fd is not None:
            with contextlib.suppress(OSError):  # the sink failed already; nothing more to learn
                os.close(self._fd)
            self._fd = None

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
    target = path.with_name(path.name + ".gz")
    try:
        with path.open("rb") as source, gzip.open(target, "wb", compresslevel=1) as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        path.unlink()
    except OSError as exc:  # the uncompressed file stays: nothing is lost
        log.warning("could not compress %s: %s", path.name, exc)
        target.unlink(missing_ok=True)
