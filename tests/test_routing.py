"""The release rules as pure code: routing/router.py without HTTP, over many seeded draws."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from routing.route import Route
from routing.router import Decision, HeaderLookup, Role, Router

USERS = [f"user-{i}" for i in range(2000)]


def user(value: str) -> HeaderLookup:
    """A request's header lookup that carries ``x-user-id: value``."""
    return lambda name: value if name == "x-user-id" else None


def test_sticky_users_never_leave_a_growing_canary() -> None:
    router = Router(random.Random(1).random)
    placed: dict[str, int] = {}
    for canary in (1, 5, 10, 25, 50, 75, 99):
        route = Route({1: 100 - canary, 2: canary}, sticky_header="x-user-id")
        now = {u: router.choose(route, user(u)).version for u in USERS}
        moved_back = [u for u in USERS if placed.get(u) == 2 and now[u] != 2]
        assert not moved_back  # growing the canary only moves users onto it
        on_canary = sum(v == 2 for v in now.values()) / len(USERS)
        assert abs(on_canary - canary / 100) < 0.04
        placed = now


def test_sticky_needs_no_draw_and_a_missing_header_falls_back_to_weights() -> None:
    def no_draw() -> float:
        raise AssertionError("a sticky request draws nothing")

    route = Route({1: 50, 2: 50}, sticky_header="x-user-id")
    first = Router(no_draw).choose(route, lambda _: "alice")
    assert first == Router(no_draw).choose(route, lambda _: "alice")
    seen = Counter(Router(random.Random(seed).random).choose(route, lambda _: None).version for seed in range(400))
    assert set(seen) == {1, 2}


@pytest.mark.parametrize("weights", [{1: 90, 2: 10}, {1: 50, 2: 50}, {1: 70, 2: 20, 3: 10}, {4: 1, 5: 99}])
def test_weights_hold_within_a_tolerance_over_many_seeded_draws(weights: dict[int, int]) -> None:
    router = Router(random.Random(7).random)
    route = Route(weights)
    draws = 20_000
    counts = Counter(router.choose(route).version for _ in range(draws))
    for version, weight in weights.items():
        assert abs(counts[version] / draws - weight / 100) < 0.015, (version, counts)


def test_roles_primary_canary_and_pinned() -> None:
    router = Router(random.Random(3).random)
    route = Route({1: 90, 2: 10}, seq=4)
    roles = {router.choose(route).role for _ in range(500)}
    assert roles == {Role.PRIMARY, Role.CANARY}
    assert router.choose(route, pinned=2) == Decision(2, Role.PINNED, 0)  # no route decided it
    assert router.choose(None, pinned=3) == Decision(3, Role.PINNED, 0)
    with pytest.raises(ValueError, match="needs a route"):
        router.choose(None)


def test_shadows_never_answer_and_are_drawn_with_their_fraction() -> None:
    router = Router(random.Random(11).random)
    route = Route({1: 100}, shadow={2: 1.0, 3: 0.25})
    decisions = [router.choose(route) for _ in range(8000)]
    assert all(d.version == 1 and d.role is Role.PRIMARY for d in decisions)  # shadows never answer
    assert all(2 in d.shadows for d in decisions)  # fraction 1: every request
    share = sum(3 in d.shadows for d in decisions) / len(decisions)
    assert abs(share - 0.25) < 0.02
    assert router.choose(route, pinned=1).shadows == ()  # a pinned request is not mirrored


def test_a_single_version_route_costs_no_draw() -> None:
    def no_draw() -> float:
        raise AssertionError("one version, no shadow: nothing to draw")

    assert Router(no_draw).choose(Route.latest(3, seq=2)) == Decision(3, Role.PRIMARY, 2)


def test_routing_imports_nothing_http() -> None:
    import subprocess
    import sys

    code = (
        "import sys, routing.router, routing.route; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'starlette', 'uvicorn', 'gateway', 'httptools'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
