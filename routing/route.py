"""A model's route: the weight of each version, picked per request."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Route:
    """Integer weights per version summing to 100; ``seq`` numbers the route's changes.

    Routes are immutable: a change builds a new Route and swaps one reference, so a request
    sees the old route or the new one, never a mix.
    """

    weights: Mapping[int, int]
    seq: int = 0
    _versions: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _bounds: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValueError("a route needs at least one version")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) != 100:
            raise ValueError("route weights must be non-negative and sum to 100")
        live = sorted((v, w) for v, w in self.weights.items() if w > 0)
        bounds, total = [], 0
        for _, weight in live:
            total += weight
            bounds.append(total)
        object.__setattr__(self, "_versions", tuple(v for v, _ in live))
        object.__setattr__(self, "_bounds", tuple(bounds))

    @classmethod
    def latest(cls, version: int, seq: int = 0) -> Route:
        """All traffic to one version (Triton's "latest" policy at start-up)."""
        return cls({version: 100}, seq)

    @property
    def primary(self) -> int:
        """The version with the most weight (the highest such version on a tie)."""
        return max(self.weights, key=lambda v: (self.weights[v], v))

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
