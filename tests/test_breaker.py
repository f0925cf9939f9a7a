"""The circuit breaker, on a clock the test moves."""

from __future__ import annotations

from runtimes.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_n_consecutive_failures_and_a_probe_closes_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(3, 5.0, clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    assert breaker.allow()
    breaker.succeeded()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state is BreakerState.OPEN and breaker.opened == 1
    assert not breaker.allow() and breaker.retry_after_s() == 5.0
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_a_failed_probe_opens_it_again_and_an_abandoned_one_frees_the_place() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.failed()
    clock.now += 1.0
    assert breaker.allow()
    breaker.abandoned()  # the probe's client left: no verdict
    assert breaker.allow()
    breaker.failed()
    assert breaker.state is BreakerState.OPEN and breaker.opened == 2
    assert not breaker.allow()


def test_zero_failures_never_opens() -> None:
    breaker = CircuitBreaker(0, 1.0, Clock())
    for _ in range(100):
        breaker.failed()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
