"""The serving decision: which version answers a request, in what role, and who shadows it."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from routing.route import Route, sticky_bucket

#: Looks a request header up by its lower-case name (None when absent).
HeaderLookup = Callable[[str], str | None]


class Role(enum.StrEnum):
    """Why a version serves a request, as the response header, the log and the metrics say."""

    PRIMARY = "primary"
    CANARY = "canary"
    PINNED = "pinned"
    #: A mirrored copy: computed after the answer, never the answer.
    SHADOW = "shadow"


@dataclass(slots=True)
class Decision:
    """The outcome of routing one request (not frozen: a frozen dataclass costs 0.3 us more per request)."""

    version: int
    role: Role
    #: The route's sequence number (0 for a pinned request): the prediction log names it.
    route_seq: int
    #: Versions owed a copy of this request once it is answered, each drawn with its fraction.
    shadows: tuple[int, ...] = ()


class Router:
    """Decides who serves: weights, sticky buckets, pinned versions and the shadow draws.

    Pure: no I/O, no clock, no HTTP. ``uniform`` gives draws in [0, 1) (a seeded
    ``random.Random().random`` in tests), so the release rules can be tested by themselves.
    """

    __slots__ = ("_uniform",)

    def __init__(self, uniform: Callable[[], float]) -> None:
        self._uniform = uniform

    def choose(self, route: Route | None, header: HeaderLookup | None = None, pinned: int | None = None) -> Decision:
        """The decision for one request; ``pinned`` names the version asked for (then no route is needed).

        Routed requests follow the route: by the bucket of the sticky header's value when the
        route has a sticky header and the request carries it, else at random by weight. Only
        routed requests are mirrored to shadows; a pinned request asked for one version.
        """
        if pinned is not None:  # no route decided it: the log's route_seq is 0 (docs/prediction-log.md)
            return Decision(pinned, Role.PINNED, 0)
        if route is None:
            raise ValueError("a routed request needs a route")
        seq = route.seq
        name = route.sticky_header
        value = header(name) if name is not None and header is not None else None
        version = route.draw(self._uniform) if value is None else route.pick(sticky_bucket(value))
        role = Role.PRIMARY if version == route.primary else Role.CANARY
        return Decision(version, role, seq, self.shadows(route) if route.shadow else ())

    def shadows(self, route: Route) -> tuple[int, ...]:
        """The shadows a routed request is mirrored to: each with its fraction (1.0: always, no draw)."""
        uniform = self._uniform
        return tuple(v for v, fraction in route.shadow.items() if fraction >= 1.0 or uniform() < fraction)
