"""Structured logs: one JSON object per line (ELK, Loki and friends ingest them as they are).

Every record carries ``ts`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``; fields
passed as ``extra={"fields": {...}}`` are merged in at the top level. The access log writes
one such record per inference request under the logger ``tensorgate.access``.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import Scope

from gateway.exchange import Exchange

ACCESS_LOGGER = "tensorgate.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON: standard fields, then the record's ``fields``, then any exception."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, fmt: str) -> None:
    """Send every logger's records (uvicorn's too) to stderr, as JSON or as text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python warnings (libraries' deprecations, ONNX Runtime's provider notices) become records
    # of the "py.warnings" logger instead of bare text on stderr, which breaks a JSON stream.
    logging.captureWarnings(True)


class AccessLog:
    """One record per inference request: id, model, version, role, status and latency."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)

    def record(self, scope: Scope, exchange: Exchange, seconds: float) -> None:
        """Log one finished request."""
        client = scope.get("client")
        self._logger.info(
            "%s %s %d",
            scope["method"],
            scope["path"],
            exchange.status,
            extra={
                "fields": {
                    "request_id": exchange.request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "model": exchange.model or None,
                    "version": exchange.version or None,
                    "role": exchange.role or None,
                    "status": exchange.status,
                    "latency_ms": round(seconds * 1e3, 3),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                }
            },
        )
