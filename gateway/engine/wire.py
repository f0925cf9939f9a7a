"""The engine's wire format: a length-prefixed orjson header, then the tensors' raw bytes.

A message is a *record*: ``[u32 record size][u32 header size][header JSON]``, padded to
``ALIGN``, then its tensors' bytes when they are small (``INLINE_BYTES`` in all: one frame, since
every extra ZeroMQ frame costs microseconds on the hop), each padded to ``ALIGN``; bigger
tensors go as one frame per tensor after the record's frame, sent zero-copy (``copy=False``).
A frame may hold several single-frame records one after the other (a *packet*): a channel sends
everything queued for one peer in one loop turn as one ZeroMQ message
(gateway/engine/channel.py), since each ZeroMQ send costs more than the records it carries.
Either way the receiver's arrays are views of the received frames: no pickle, no copy beyond
the socket's. A tensor of more than ``SHM_THRESHOLD_BYTES`` goes through a file in shared
memory instead (``/dev/shm``): the sender writes it once, the receiver maps it and unlinks it
at once, so a file outlives its message only when a process dies between the two (the engine
removes its host's leftovers when it starts). The threshold is measured by
``loadtests/engine_shm.py``.

A tensor's descriptor in the header (``t``) is ``[name, dtype, shape, bytes]``, plus the file's
name when it goes through shared memory; ``dtype`` is numpy's ``dtype.str``, or ``"O"`` for
BYTES (object arrays of ``bytes``), sent as the V2 binary form (4-byte lengths).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

#: Tensors above this size go through a shared-memory file. Measured on the 2-core CI machine
#: (loadtests/engine_shm.py, docs/benchmarks.md): a file per tensor costs 2.7x the frames' round
#: trip from 16 KiB to 16 MiB (tmpfs pages are allocated, zeroed and freed for every message,
#: while ZeroMQ over IPC copies twice), so only tensors too big to hold twice in ZeroMQ's
#: queues take it; ``TENSORGATE_ENGINE_SHM_BYTES`` overrides it.
SHM_THRESHOLD_BYTES = 64 << 20
#: The environment variable that overrides the threshold (bytes).
ENV_SHM_BYTES = "TENSORGATE_ENGINE_SHM_BYTES"
#: Where the shared-memory files live (a tmpfs); the run directory when there is none.
SHM_DIR = Path("/dev/shm")

_LENGTH = struct.Struct("<I")
#: A record's prefix: its size (padded) and its header's size.
_PREFIX = struct.Struct("<II")
#: Tensor data up to this size rides in the header's frame (pyzmq copies frames this small anyway).
INLINE_BYTES = 64 << 10
#: Where inline tensors start (numpy views of aligned data need no copy).
ALIGN = 8

Frame = bytes | memoryview
Descriptor = list[Any]


#: Padding by size (spaces: harmless between a header and its tensors).
_PADS = tuple(b" " * i for i in range(ALIGN))
#: numpy dtypes by ``dtype.str`` (``np.dtype(str)`` parses the string at every call).
_DTYPES: dict[str, np.dtype[Any]] = {}


def _record(text: bytes, buffers: Sequence[Frame] = ()) -> bytes:
    """One record: the prefix, the header ``text`` and ``buffers`` inline, each padded to ``ALIGN``."""
    head = _PREFIX.size + len(text)
    parts: list[Frame] = [b"", text, _PADS[-head % ALIGN]]
    size = head + (-head % ALIGN)
    for buffer in buffers:
        length = len(buffer)
        parts += (buffer, _PADS[-length % ALIGN])
        size += length + (-length % ALIGN)
    parts[0] = _PREFIX.pack(size, len(text))
    return b"".join(parts)


def dumps(header: dict[str, Any]) -> bytes:
    """The frame of a message without tensors."""
    return _record(orjson.dumps(header))


def _bytes_to_buffer(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def _buffer_to_bytes(buffer: memoryview, shape: Sequence[int]) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        (length,) = _LENGTH.unpack_from(buffer, offset)
        offset += _LENGTH.size
        out[i] = bytes(buffer[offset : offset + length])
        offset += length
    return out.reshape(shape)


class SharedFiles:
    """Writes tensors to shared-memory files named ``<tag>-<pid>-<n>`` and maps received ones."""

    def __init__(self, tag: str, directory: Path | None = None, threshold: int = SHM_THRESHOLD_BYTES) -> None:
        self.directory = directory if directory is not None else (SHM_DIR if SHM_DIR.is_dir() else Path("/tmp"))
        self.tag = tag
        self.threshold = threshold
        self._names = itertools.count()

    def write(self, buffer: memoryview) -> str:
        """Write ``buffer`` to a new file; its name (the receiver unlinks it)."""
        name = f"{self.tag}-{os.getpid()}-{next(self._names)}"
        path = self.directory / name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            view = buffer.cast("B")
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        except BaseException:
            path.unlink(missing_ok=True)  # a full /dev/shm: no half-written file left holding memory
            raise
        finally:
            os.close(fd)
        return name

    def read(self, name: str, size: int) -> memoryview:
        """Map file ``name`` (``size`` bytes) and unlink it: the mapping lives as long as its arrays."""
        if "/" in name or not name.startswith(self.tag):
            raise ValueError(f"not a shared tensor of this host: {name!r}")
        path = self.directory / name
        fd = os.open(path, os.O_RDONLY)
        try:
            os.unlink(path)
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mapped = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        return memoryview(mapped)

    def discard(self, descriptors: Iterable[Descriptor]) -> None:
        """Unlink the files of tensors that will never be read (an answer nobody waits for)."""
        for desc in descriptors:
            if len(desc) > 4:
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / desc[4])

    def clean(self) -> int:
        """Remove every file of this tag (a previous incarnation's leftovers); how many."""
        removed = 0
        for path in self.directory.glob(f"{self.tag}-*"):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
        return removed


def pack(arrays: Iterable[tuple[str, np.ndarray]], files: SharedFiles) -> tuple[list[Descriptor], list[Frame]]:
    """Descriptors and buffers for ``arrays`` (large ones written to shared memory, no buffer)."""
    descriptors: list[Descriptor] = []
    frames: list[Frame] = []
    for name, array in arrays:
        if array.dtype == object:
            buffer: Frame = _bytes_to_buffer(array)
            dtype = "O"
        else:
            contiguous = np.ascontiguousarray(array)
            buffer = contiguous.data.cast("B") if contiguous.size else b""
            dtype = array.dtype.str
        shape = list(array.shape)
        if len(buffer) > files.threshold:
            descriptors.append([name, dtype, shape, len(buffer), files.write(memoryview(buffer))])
        else:
            descriptors.append([name, dtype, shape, len(buffer)])
            frames.append(buffer)
    return descriptors, frames


def encode(header: dict[str, Any], arrays: Iterable[tuple[str, np.ndarray]] | None, files: SharedFiles) -> list[Frame]:
    """A message: ``header`` (with the arrays' descriptors under ``t``) and the arrays' bytes.

    Up to ``INLINE_BYTES`` of tensor data rides in the record's frame (one frame: every extra
    ZeroMQ frame costs microseconds on the hop); more goes as one frame per tensor (zero-copy).
    The header and every inline tensor start at a multiple of ``ALIGN`` bytes.
    """
    buffers: list[Frame] = []
    if arrays is not None:
        header["t"], buffers = pack(arrays, files)
        if sum(len(b) for b in buffers) <= INLINE_BYTES:
            header["x"] = 1
            return [_record(orjson.dumps(header), buffers)]
    return [_record(orjson.dumps(header)), *buffers]


def decode_all(frames: Sequence[Any]) -> list[tuple[dict[str, Any], Message]]:
    """Every record of a message (a packet of several, or one with its tensor frames)."""
    first = frames[0]
    buffer = first.buffer if hasattr(first, "buffer") else memoryview(first)
    rest = frames[1:]
    total = len(buffer)
    records: list[tuple[dict[str, Any], Message]] = []
    offset = 0
    while offset < total:
        size, length = _PREFIX.unpack_from(buffer, offset)
        start = offset + _PREFIX.size
        end = start + length
        if size % ALIGN or end > offset + size or offset + size > total:
            raise ValueError("a malformed engine message")
        # bytes, not the view: orjson parses bytes faster than it copies a memoryview's.
        header = orjson.loads(bytes(buffer[start:end]))
        if not isinstance(header, dict):
            raise ValueError("an engine message's header must be a JSON object")
        offset += size
        records.append((header, Message(buffer[end + (-end % ALIGN) : offset], rest)))
    if not records:
        raise ValueError("an empty engine message")
    return records


def decode(frames: Sequence[Any]) -> tuple[dict[str, Any], Message]:
    """A message's (first) record: its header, and what ``unpack`` needs for its tensors."""
    return decode_all(frames)[0]


class Message:
    """The tensor data of a received message: inline after the header, or one frame per tensor."""

    __slots__ = ("body", "frames")

    def __init__(self, body: memoryview, frames: Sequence[Any]) -> None:
        self.body = body
        self.frames = frames


def unpack(header: dict[str, Any], message: Message, files: SharedFiles) -> dict[str, np.ndarray]:
    """The arrays the header describes: views of the message (or of mapped shared files)."""
    arrays: dict[str, np.ndarray] = {}
    inline = bool(header.get("x"))
    offset = index = 0
    for desc in header.get("t") or ():
        name, dtype, shape, size = desc[0], desc[1], desc[2], desc[3]
        if len(desc) > 4:
            buffer = files.read(desc[4], size)
        elif inline:
            buffer = message.body[offset : offset + size]
            offset += size + (-size % ALIGN)
        else:
            frame = message.frames[index]
            index += 1
            buffer = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
        if len(buffer) != size:
            raise ValueError(f"tensor {name!r}: {len(buffer)} bytes where {size} were announced")
        if dtype == "O":
            arrays[name] = _buffer_to_bytes(buffer, shape)
            continue
        kind = _DTYPES.get(dtype)
        if kind is None:
            kind = np.dtype(dtype)
            if len(_DTYPES) < 64:
                _DTYPES[dtype] = kind
        shape = tuple(shape)
        if math.prod(shape) * kind.itemsize != size:
            raise ValueError(f"tensor {name!r}: shape {list(shape)} of {dtype} is not {size} bytes")
        # One constructor call: frombuffer + reshape cost twice as much on this path.
        array = np.ndarray(shape, kind, buffer) if size else np.empty(shape, kind)
        if not array.flags.aligned:
            array = array.copy()
        arrays[name] = array
    return arrays
