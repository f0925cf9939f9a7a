"""The engine's wire format: every way a tensor travels comes back equal, and shared files are cleaned up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.engine import wire


def roundtrip(
    arrays: dict[str, np.ndarray], files: wire.SharedFiles
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Encode, copy the frames as a socket would, decode."""
    frames = [bytes(f) for f in wire.encode({"id": 7}, arrays.items(), files)]
    header, message = wire.decode(frames)
    return header, wire.unpack(header, message, files)


@pytest.fixture
def files(tmp_path: Path) -> wire.SharedFiles:
    """Shared files in a test directory, for tensors over 64 KiB."""
    return wire.SharedFiles("tg-test-tensor", tmp_path, threshold=64 << 10)


def test_small_tensors_ride_in_one_frame_aligned(files: wire.SharedFiles) -> None:
    arrays: dict[str, np.ndarray] = {
        "a": np.arange(3, dtype=np.int8).reshape(1, 3),  # 3 bytes: the next one must still be aligned
        "b": np.arange(8, dtype=np.float64).reshape(2, 4),
        "s": np.array([[b"x", b""], [b"\xff\x00", b"long" * 10]], dtype=object),
        "e": np.zeros((0, 4), dtype=np.float32),
    }
    frames = wire.encode({}, arrays.items(), files)
    assert len(frames) == 1
    header, back = roundtrip(arrays, files)
    assert header["id"] == 7
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)
    assert back["b"].flags.aligned


def test_bigger_tensors_go_as_frames_and_the_biggest_through_shared_memory(
    files: wire.SharedFiles, tmp_path: Path
) -> None:
    medium = np.random.default_rng(0).random((40, 256), dtype=np.float32)  # 40 KiB: a frame of its own
    medium2 = medium + 1  # together over INLINE_BYTES
    big = np.random.default_rng(1).random((100, 256), dtype=np.float32)  # 100 KiB: a shared file
    frames = wire.encode({}, [("m", medium), ("m2", medium2), ("big", big)], files)
    assert len(frames) == 3  # the header, then the two medium tensors
    assert len(list(tmp_path.iterdir())) == 1
    header, message = wire.decode([bytes(f) for f in frames])
    back = wire.unpack(header, message, files)
    np.testing.assert_array_equal(back["m"], medium)
    np.testing.assert_array_equal(back["m2"], medium2)
    np.testing.assert_array_equal(back["big"], big)
    assert list(tmp_path.iterdir()) == []  # the reader unlinked it (its mapping lives on)


def test_an_answer_nobody_reads_leaves_no_file(files: wire.SharedFiles, tmp_path: Path) -> None:
    big = np.ones((100, 256), dtype=np.float32)
    frames = wire.encode({}, [("big", big)], files)
    header, _ = wire.decode(frames)
    files.discard(header["t"])
    assert list(tmp_path.iterdir()) == []
    wire.encode({}, [("big", big)], files)
    assert files.clean() == 1


def test_a_file_outside_the_hosts_tag_is_refused(files: wire.SharedFiles) -> None:
    header = {"t": [["x", "<f4", [1], 4, "../etc/passwd"]]}
    with pytest.raises(ValueError, match="not a shared tensor"):
        wire.unpack(header, wire.Message(memoryview(b""), []), files)


def test_a_packet_of_records_decodes_to_each_with_aligned_tensors(files: wire.SharedFiles) -> None:
    arrays = [np.arange(i + 1, dtype=np.int8) for i in range(3)] + [np.arange(5, dtype=np.float64)]
    packet = b"".join(
        bytes(wire.encode({"id": i}, [("a", array)], files)[0]) for i, array in enumerate(arrays)
    ) + wire.dumps({"op": "pong"})
    records = wire.decode_all([packet])
    assert [header.get("id") for header, _ in records] == [0, 1, 2, 3, None]
    for (header, message), array in zip(records, arrays, strict=False):
        back = wire.unpack(header, message, files)["a"]
        np.testing.assert_array_equal(back, array)
        assert back.flags.aligned
    assert wire.unpack(*records[4], files) == {}


def test_malformed_messages_are_refused(files: wire.SharedFiles) -> None:
    frame = bytes(wire.encode({"id": 1}, [("x", np.ones((2, 2), np.float32))], files)[0])
    with pytest.raises(ValueError, match="malformed"):
        wire.decode_all([frame[:-8]])  # shorter than its record says
    with pytest.raises(ValueError, match="empty"):
        wire.decode_all([b""])
    header, message = wire.decode([frame])
    header["t"][0][2] = [4, 2]  # a shape that is not the bytes announced
    with pytest.raises(ValueError, match="is not 16 bytes"):
        wire.unpack(header, message, files)


def test_a_file_that_does_not_fit_is_not_left_behind(tiny_disk: Path) -> None:
    """A full /dev/shm (a real 64 KiB tmpfs here): the write fails and no partial file holds memory."""
    files = wire.SharedFiles("tg-test-tensor", tiny_disk, threshold=1024)
    with pytest.raises(OSError):
        files.write(memoryview(np.zeros(64 << 10, dtype=np.float32)))
    assert not list(tiny_disk.iterdir())
