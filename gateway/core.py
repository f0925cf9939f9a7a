"""The core the app's lifespan builds once, and the slot every front end reads it from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import Unavailable

if TYPE_CHECKING:
    from gateway.auth import BearerAuth
    from gateway.drift.online import DriftMonitor
    from gateway.host.merge import HostView
    from gateway.host.roles import HostRole
    from gateway.inference import InferenceService
    from gateway.models import ModelManager
    from gateway.predlog.writer import PredictionLog
    from gateway.release.controller import ReleaseController
    from gateway.release.shadow import ShadowRunner
    from gateway.rollouts.runner import RolloutManager
    from gateway.state.fleet import Fleet


@dataclass(frozen=True, slots=True)
class Core:
    """Everything the lifespan builds for one run of the app; REST, gRPC and metrics read it."""

    manager: ModelManager
    service: InferenceService
    controller: ReleaseController
    #: The admin API's bearer token check (the token provisioned at start-up).
    auth: BearerAuth
    shadows: ShadowRunner
    rollouts: RolloutManager
    predlog: PredictionLog | None = None
    drift: DriftMonitor | None = None
    #: The shared state of a fleet (``[state] store``); None for one replica.
    fleet: Fleet | None = None
    #: A worker of a multi-process host: /metrics and statistics for the whole host (gateway/host/merge.py).
    host: HostView | None = None
    #: This process's place on a multi-process host (``--workers``); None for one process.
    role: HostRole | None = None


class CoreSlot:
    """Holds the core while the lifespan runs: set once at start-up, cleared at shutdown.

    ``create_app`` makes one and hands it to every handler, middleware and collector at
    construction; none of them is attached to anything later.
    """

    __slots__ = ("current",)

    def __init__(self) -> None:
        #: The running core, or None before start-up and after shutdown (a plain attribute:
        #: the inference hot path reads it once per request).
        self.current: Core | None = None

    @property
    def core(self) -> Core:
        """The running core; Unavailable (503, gRPC UNAVAILABLE) before start-up or after shutdown."""
        core = self.current
        if core is None:
            raise Unavailable("the server is starting")
        return core

    def set(self, core: Core) -> None:
        """Called once by the lifespan when everything is built."""
        if self.current is not None:
            raise RuntimeError("the core is already set: one app serves one lifespan at a time")
        self.current = core

    def clear(self) -> None:
        """Called by the lifespan at shutdown."""
        self.current = None
