"""What one inference request did, filled in as it goes and read by metrics and logs."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gateway.models import ModelVersion


class Exchange:
    """One inference request: who served it, in what role, with what, and how it ended.

    The transport creates it, the inference service fills in the model, version, role, route,
    inputs and outputs; the transport sets the status and hands it to the prediction log.
    Fields stay empty when the request failed before they were known (an unknown model's name
    is never a metric label: that would let clients create label values at will).
    """

    __slots__ = ("inputs", "model", "outputs", "request_id", "role", "route_seq", "served", "status", "version")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.model = ""
        self.version = ""
        self.role = ""
        self.route_seq = 0
        self.status = 0
        #: The version that served, once chosen; its decoded inputs and its outputs once known.
        self.served: ModelVersion | None = None
        self.inputs: Mapping[str, np.ndarray] | None = None
        self.outputs: Sequence[tuple[str, np.ndarray]] | None = None


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
