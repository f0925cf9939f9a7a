"""What one inference request did, filled in as it goes and read by metrics and logs."""

from __future__ import annotations

import itertools
import os


class Exchange:
    """One inference request: who served it, in what role, and how it ended.

    The transport creates it, the inference service fills in the model, version, role and
    route; the transport sets the status. Fields stay empty when the request failed before
    they were known (an unknown model's name is never a metric label: that would let clients
    create label values at will).
    """

    __slots__ = ("model", "request_id", "role", "route_seq", "status", "version")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.model = ""
        self.version = ""
        self.role = ""
        self.route_seq = 0
        self.status = 0


class RequestIds:
    """Request ids for requests that bring none: a random per-process prefix and a counter.

    Unique across restarts and replicas (the prefix) at the cost of a string format, where a
    uuid4 per request would cost an OS random read.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = prefix if prefix is not None else os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        """A fresh id."""
        return f"{self._prefix}-{next(self._counter):x}"
