"""A model's route: weights over versions, an optional sticky header, optional shadows."""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_HEADER_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


class RouteError(ValueError):
    """A route document that cannot be a route; the message says why."""


def sticky_bucket(value: str) -> float:
    """The bucket in [0, 100) of a sticky header value: a stable hash, the same everywhere.

    blake2b of the UTF-8 value, first 8 bytes as an integer, modulo 10,000, over 100: the
    same in every process, on every machine and after every restart (unlike ``hash()``).
    """
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") % 10_000) / 100.0


@dataclass(frozen=True, slots=True)
class Route:
    """Integer weights per version summing to 100; ``seq`` numbers the route's changes.

    Routes are immutable: a change builds a new Route and swaps one reference, so a request
    sees the old route or the new one, never a mix. Versions own consecutive bucket ranges in
    ascending version order, so with two versions, growing one's weight only moves buckets
    from the other to it: users already on it stay there.
    """

    weights: Mapping[int, int]
    seq: int = 0
    #: Version -> fraction of routed requests mirrored to it, in (0, 1].
    shadow: Mapping[int, float] = field(default_factory=dict)
    #: Requests with this header stick to the version their value hashes to.
    sticky_header: str | None = None
    _versions: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _bounds: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _primary: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.weights:
            raise RouteError("a route needs at least one version")
        for version, weight in self.weights.items():
            if type(version) is not int or version < 1:
                raise RouteError(f"invalid version {version!r}")
            if type(weight) is not int or weight < 0:
                raise RouteError(f"weight of version {version} must be a non-negative integer")
        if sum(self.weights.values()) != 100:
            raise RouteError(f"weights must sum to 100, not {sum(self.weights.values())}")
        for version, fraction in self.shadow.items():
            if type(version) is not int or version < 1:
                raise RouteError(f"invalid shadow version {version!r}")
            if not (isinstance(fraction, int | float) and not isinstance(fraction, bool)) or not (
                0.0 < fraction <= 1.0 and math.isfinite(fraction)
            ):
                raise RouteError(f"shadow fraction of version {version} must be in (0, 1]")
            if self.weights.get(version, 0) > 0:
                raise RouteError(f"version {version} cannot both take traffic and shadow it")
        if self.sticky_header is not None and (
            not self.sticky_header or not set(self.sticky_header.lower()) <= _HEADER_NAME
        ):
            raise RouteError("sticky_header must be a header name (letters, digits, '-', '_')")
        live = sorted((v, w) for v, w in self.weights.items() if w > 0)
        bounds, total = [], 0
        for _, weight in live:
            total += weight
            bounds.append(total)
        object.__setattr__(self, "_versions", tuple(v for v, _ in live))
        object.__setattr__(self, "_bounds", tuple(bounds))
        object.__setattr__(self, "_primary", max(self.weights, key=lambda v: (self.weights[v], v)))

    @classmethod
    def latest(cls, version: int, seq: int = 0) -> Route:
        """All traffic to one version (Triton's "latest" policy at start-up)."""
        return cls({version: 100}, seq)

    @property
    def primary(self) -> int:
        """The version with the most weight (the highest such version on a tie)."""
        return self._primary

    @property
    def versions(self) -> frozenset[int]:
        """Every version the route names: weighted (even at 0) and shadows."""
        return frozenset(self.weights) | frozenset(self.shadow)

    def draw(self, uniform: Callable[[], float]) -> int:
        """The version for a request, drawn at random by weight; ``uniform`` gives [0, 1)."""
        versions = self._versions
        if len(versions) == 1:
            return versions[0]  # no draw: the common case costs nothing
        return versions[bisect.bisect_right(self._bounds, uniform() * 100.0)]

    def pick(self, bucket: float) -> int:
        """The version for a request whose bucket is ``bucket`` in [0, 100)."""
        versions = self._versions
        if len(versions) == 1:
            return versions[0]
        return versions[bisect.bisect_right(self._bounds, bucket)]

    def with_seq(self, seq: int) -> Route:
        """The same route under another sequence number."""
        return Route(dict(self.weights), seq, dict(self.shadow), self.sticky_header)

    def to_json(self) -> dict[str, Any]:
        """The route as the admin API shows it (versions as strings)."""
        return {
            "seq": self.seq,
            "weights": {str(v): w for v, w in sorted(self.weights.items())},
            "shadow": {str(v): f for v, f in sorted(self.shadow.items())},
            "sticky_header": self.sticky_header,
        }

    @classmethod
    def from_json(cls, doc: Any, seq: int = 0) -> Route:
        """Parse ``{"weights": {...}, "shadow": {...}, "sticky_header": ...}``; RouteError if invalid."""
        if type(doc) is not dict:
            raise RouteError("a route must be a JSON object")
        unknown = set(doc) - {"weights", "shadow", "sticky_header", "seq", "reason", "actor"}
        if unknown:
            raise RouteError(f"unknown route fields: {', '.join(sorted(unknown))}")
        weights = _versions_map(doc.get("weights"), "weights")
        shadow = _versions_map(doc.get("shadow") or {}, "shadow")
        sticky = doc.get("sticky_header")
        if sticky is not None and type(sticky) is not str:
            raise RouteError("sticky_header must be a string or null")
        return cls(weights, seq, shadow, sticky.lower() if sticky else None)


def _versions_map(value: Any, what: str) -> dict[int, Any]:
    if type(value) is not dict:
        raise RouteError(f"'{what}' must be an object of version -> value")
    parsed: dict[int, Any] = {}
    for key, item in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and not key.startswith("0")) or len(key) > 19:
            raise RouteError(f"'{what}': invalid version {key!r:.40}")
        parsed[int(key)] = item
    return parsed
