"""One prediction-log writer per process, or one for the host: what one writer can write, and what P write together.

A multi-process host (``--workers N``) could send every worker's records to one writer, or let
each worker write its own file set (what tensorgate does: file names carry the pid). This
measures one writer thread's ceiling (records of the example scorer's shape: 16 FP32 features
in, one score out, encoded and written as the gateway does) and P processes writing at once,
each its own files. One writer for the host would be bounded by the first figure (its encoding
holds one interpreter's GIL), on top of an IPC hop per record.

    .venv/bin/python loadtests/predlog_writers.py --records 100000 --processes 1 2
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_WRITER = """
import asyncio, sys, time
from pathlib import Path
import numpy as np
from gateway.predlog.records import PredictionRecord, RecordMeta
from gateway.predlog.writer import PredictionLog

async def main(directory, count):
    log = PredictionLog(Path(directory), hash_key=b"k" * 32, queue_size=count + 1, queue_bytes=1 << 40)
    log.start()
    inputs = {"INPUT0": np.arange(16, dtype=np.float32).reshape(1, 16)}
    outputs = [("OUTPUT0", np.array([[0.25]], dtype=np.float32))]
    started = time.perf_counter()
    for i in range(count):
        log.offer(PredictionRecord(time.time(), f"id-{i}", "scorer", "1", "primary", 1, inputs, {"INPUT0": "FP32"},
                                   outputs, {"OUTPUT0": "FP32"}, 200, 0.0001, RecordMeta()))
        if i % 1000 == 999:
            await asyncio.sleep(0)  # the event loop's turn, as between requests
    await log.close(timeout_s=600)
    elapsed = time.perf_counter() - started
    assert sum(log.records().values()) == count and not log.dropped()
    print(elapsed)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def run(processes: int, records: int) -> float:
    """Records per second written by ``processes`` processes at once, each its own file set."""
    with tempfile.TemporaryDirectory(prefix="tg-predlog-") as scratch:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(_WRITER), str(Path(scratch) / str(i)), str(records)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            for i in range(processes)
        ]
        try:
            elapsed = [float(child.communicate(timeout=600)[0]) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait(timeout=10)
        lines = sum(len(path.read_bytes().splitlines()) for path in Path(scratch).rglob("*.jsonl"))
        assert lines == processes * records, (lines, processes * records)
        return processes * records / max(elapsed)


def main() -> None:
    """Print records/s for each process count."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="records per process")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    signal.alarm(900)  # bounded, whatever happens
    for processes in args.processes:
        rate = run(processes, args.records)
        print(f"{processes} process(es), one writer each: {rate:,.0f} records/s in all")


if __name__ == "__main__":
    main()
