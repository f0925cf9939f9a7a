"""Faults of a real (small tmpfs) disk: the ``tiny_disk`` fixture lives in conftest.py."""

from __future__ import annotations

import subprocess
from pathlib import Path


def remount(mountpoint: Path, mode: str) -> None:
    """Remount the tmpfs ``ro`` or ``rw`` while a server writes to it."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mountpoint)], check=True)
