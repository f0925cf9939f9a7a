"""Validation of model names and versions, done before anything touches the filesystem."""

from __future__ import annotations

import re

from gateway.errors import BadRequest

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Positive, no leading zero, and below 2**63 (19 digits at most; checked exactly below).
_VERSION = re.compile(r"[1-9][0-9]{0,18}")
MAX_VERSION = 2**63 - 1


def is_model_name(name: str) -> bool:
    """True for names matching ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`` without ``..``."""
    return _MODEL_NAME.fullmatch(name) is not None and ".." not in name


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name, else a 400 that does not echo it."""
    if not is_model_name(name):
        raise BadRequest("invalid model name: use 1-128 of A-Z a-z 0-9 _ . - starting with a letter or digit")
    return name


def parse_version(text: str) -> int:
    """The version number in ``text`` (a positive decimal integer), else a 400."""
    if _VERSION.fullmatch(text) is None or int(text) > MAX_VERSION:
        raise BadRequest("invalid model version: versions are positive integers")
    return int(text)
