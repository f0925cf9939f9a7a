"""The configuration error, in a module of its own so the CLI can catch it without importing runtimes."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration file is unreadable or holds an unknown key or a bad value."""
