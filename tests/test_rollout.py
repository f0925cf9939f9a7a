"""Rollouts without a server: the spec, the window analysis and the state machine on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.release.shadow import ShadowStats
from gateway.rollouts.analysis import FAIL, INCONCLUSIVE, PASS, Counters, Result, evaluate, quantile
from gateway.rollouts.figures import Figures
from gateway.rollouts.machine import Rollout
from gateway.rollouts.spec import Analysis, SpecError, parse_spec
from gateway.telemetry.histogram import LATENCY_BUCKETS
from gateway.telemetry.requests import RequestMetrics, Series

BEFORE: dict[str, Any] = {"weights": {"1": 100}, "shadow": {}, "sticky_header": None}
SPEC: dict[str, Any] = {
    "to": "2",
    "shadow_first": {"fraction": 1.0, "duration_s": 60},
    "steps": [{"weight": 5, "pause_s": 60}, {"weight": 50, "pause_s": 120}],
    "analysis": {"interval_s": 30, "min_requests": 100, "max_error_rate": 0.01, "max_p99_ratio": 1.5,
                 "min_shadow_agreement": 0.98, "failure_limit": 2},
    "reason": "weekly retrain",
}  # fmt: skip


def latency(seconds: float, count: int) -> tuple[int, ...]:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[next(i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b)] = count
    return tuple(counts)


def traffic(requests: int, errors: int = 0, seconds: float = 0.002) -> Counters:
    return Counters(requests=requests, errors=errors, latency=latency(seconds, requests), bounds=LATENCY_BUCKETS)


def shadow(mirrored: int, agree: float, failed: int = 0) -> Counters:
    return Counters(shadow_mirrored=mirrored, shadow_failed=failed, shadow_compared=mirrored, shadow_agree=agree)


PASSED = Result(PASS, 500)
FAILED = Result(FAIL, 500, message="error_rate 0.2 past 0.01")
UNSURE = Result(INCONCLUSIVE, 3, message="3 of 100 requests needed")


# -- the spec ----------------------------------------------------------------------------------


def test_spec_round_trips_with_defaults() -> None:
    spec = parse_spec(SPEC)
    assert spec.to == 2 and [s.weight for s in spec.steps] == [5, 50]
    assert spec.analysis.max_drift_psi is None and spec.on_success == "promote"
    assert parse_spec(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"to": "x"}, "to"),
        ({"to": None}, "to"),
        ({"to": 2**70}, "to"),
        ({"to": True}, "to"),
        ({"steps": {"weight": 5}}, "steps"),
        ({"steps": [{"weight": 5, "pause_s": True}]}, "pause_s"),
        ({"analysis": []}, "analysis"),
        ({"steps": [{"weight": 0}]}, "weight"),
        ({"steps": [{"weight": 50}, {"weight": 10}]}, "below"),
        ({"steps": [{"weight": 5, "pause_s": -1}]}, "pause_s"),
        ({"steps": [], "shadow_first": None}, "needs steps"),
        ({"analysis": {"interval_s": 0}}, "interval_s"),
        ({"analysis": {"max_error_rate": 2}}, "max_error_rate"),
        ({"analysis": {"failure_limit": 0}}, "failure_limit"),
        ({"analysis": {"max_eror_rate": 0.1}}, "unknown field"),
        ({"colour": "blue"}, "unknown field"),
        ({"on_success": "party"}, "on_success"),
        ({"shadow_first": {"fraction": 0, "duration_s": 1}}, "fraction"),
        ({"sticky_header": "bad header"}, "sticky_header"),
        ({"webhook": "ftp://x"}, "webhook"),
    ],
)
def test_bad_specs_name_the_field(change: dict[str, Any], word: str) -> None:
    with pytest.raises(SpecError, match=word):
        parse_spec({**SPEC, **change})


# -- the analysis ------------------------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket() -> None:
    counts = latency(0.002, 100)  # all in (0.001, 0.0025]
    value = quantile(0.99, counts, LATENCY_BUCKETS)
    assert value is not None and 0.001 < value <= 0.0025
    assert quantile(0.99, [0] * len(counts), LATENCY_BUCKETS) is None


def test_counters_subtract_into_a_window() -> None:
    later = Counters(requests=150, errors=3, latency=latency(0.002, 150), bounds=LATENCY_BUCKETS)
    window = later.minus(Counters(requests=100, errors=1, latency=latency(0.002, 100), bounds=LATENCY_BUCKETS))
    assert (window.requests, window.errors, sum(window.latency)) == (50, 2, 50)


def test_a_healthy_window_passes_with_every_figure() -> None:
    analysis = parse_spec(SPEC).analysis
    result = evaluate(analysis, traffic(500, 1), traffic(9500), shadowing=False)
    assert result.verdict == PASS
    figures = {c.name: c for c in result.checks}
    assert figures["error_rate"].value == pytest.approx(0.002) and figures["error_rate"].threshold == 0.01
    assert figures["p99_ratio"].value == pytest.approx(1.0)
    assert "shadow_agreement" not in figures  # judged while shadowing only


def test_errors_fail_the_window() -> None:
    result = evaluate(parse_spec(SPEC).analysis, traffic(500, 50), traffic(500), shadowing=False)
    assert result.verdict == FAIL and "error_rate" in result.message


def test_errors_fail_early_below_min_requests_only_past_the_allowed_share() -> None:
    analysis = Analysis(min_requests=100, max_error_rate=0.01)
    assert evaluate(analysis, traffic(20, 5), traffic(20), shadowing=False).verdict == FAIL
    assert evaluate(analysis, traffic(20, 1), traffic(20), shadowing=False).verdict == INCONCLUSIVE


def test_a_slower_candidate_trips_the_latency_ratio() -> None:
    result = evaluate(parse_spec(SPEC).analysis, traffic(500, 0, 0.2), traffic(500, 0, 0.002), shadowing=False)
    assert result.verdict == FAIL and "p99_ratio" in result.message


def test_disagreement_fails_while_shadowing() -> None:
    analysis = parse_spec(SPEC).analysis
    assert evaluate(analysis, shadow(500, 400.0), Counters(), shadowing=True).verdict == FAIL
    assert evaluate(analysis, shadow(500, 500.0), Counters(), shadowing=True).verdict == PASS
    assert evaluate(analysis, shadow(500, 500.0, failed=100), Counters(), shadowing=True).verdict == FAIL


def test_drift_is_judged_when_there_is_a_figure() -> None:
    analysis = Analysis(max_drift_psi=0.2)
    drifted = Counters(requests=10, drift_psi=0.5)
    assert evaluate(analysis, drifted, Counters(), shadowing=False).verdict == FAIL
    assert evaluate(analysis, Counters(requests=10), Counters(), shadowing=False).verdict == PASS


def test_figures_count_5xx_and_timeouts_not_4xx_nor_shadow_copies() -> None:
    metrics = RequestMetrics()
    for role, codes in (("canary", {200: 90, 400: 5, 500: 1, 504: 2}), ("pinned", {200: 2}), ("shadow", {500: 50})):
        series = metrics.series[("m", "2", role)] = Series()
        series.codes.update(codes)
        series.latency.counts[3] += sum(codes.values())
    metrics.series[("other", "2", "canary")] = Series()
    metrics.series[("other", "2", "canary")].codes[500] = 7
    stats = ShadowStats(mirrored=10, failed=1, timed_out=1, agree_rows=7.0, compared_rows=8)
    scores = {("m", "2", "x0"): 0.1, ("m", "2", "x1"): 0.3, ("m", "1", "x0"): 0.9}
    snapshot = Figures(metrics, lambda: {("m", 2): stats}, lambda: scores).snapshot("m", 2)
    assert (snapshot.requests, snapshot.errors, sum(snapshot.latency)) == (100, 3, 100)
    assert (snapshot.shadow_mirrored, snapshot.shadow_failed, snapshot.shadow_agree) == (10, 2, 7.0)
    assert snapshot.drift_psi == 0.3
    assert Figures(metrics).snapshot("m", 3) == Counters(latency=(0,) * len(snapshot.latency), bounds=LATENCY_BUCKETS)


# -- the state machine -------------------------------------------------------------------------


def rollout(**change: Any) -> Rollout:
    return Rollout("fraud", parse_spec({**SPEC, **change}), dict(BEFORE))


def test_shadow_then_steps_then_promote() -> None:
    r = rollout()
    effects = r.start(0.0)
    assert [e.action for e in effects] == ["rollout-start", "rollout-shadow"]
    assert effects[1].route == {"weights": {"1": 100}, "shadow": {"2": 1.0}, "sticky_header": None}
    assert r.phase == "shadowing" and not r.due(29.9) and r.due(30.0)
    assert [e.action for e in r.analyse(30.0, PASSED)] == ["rollout-analysis"]  # shadow_first lasts 60 s
    effects = r.analyse(60.0, PASSED)
    assert [e.action for e in effects] == ["rollout-analysis", "rollout-step"]
    assert effects[0].details["decision"] == "advance"
    assert effects[1].route == {"weights": {"1": 95, "2": 5}, "shadow": {}, "sticky_header": None}
    assert (r.phase, r.step, r.weights()) == ("progressing", 0, {"1": 95, "2": 5})
    r.analyse(90.0, PASSED)
    effects = r.analyse(120.0, PASSED)
    assert effects[-1].route == {"weights": {"1": 50, "2": 50}, "shadow": {}, "sticky_header": None}
    r.analyse(150.0, PASSED)
    r.analyse(180.0, PASSED)
    r.analyse(210.0, PASSED)
    effects = r.analyse(240.0, PASSED)
    assert [e.action for e in effects] == ["rollout-analysis", "rollout-promote"]
    assert effects[-1].route == "promote" and effects[-1].details["standby"] == "1"
    assert (r.phase, r.weights(), r.ended_at, r.active) == ("promoted", {"2": 100}, 240.0, False)
    assert r.analyse(270.0, PASSED) == []


def test_failures_up_to_the_limit_abort_and_restore_the_route_before() -> None:
    r = rollout(shadow_first=None)
    r.before = {"weights": {"1": 100}, "shadow": {"3": 0.5}, "sticky_header": "x-user-id"}
    r.start(0.0)
    assert r.route_for_step() == {"weights": {"1": 95, "2": 5}, "shadow": {"3": 0.5}, "sticky_header": "x-user-id"}
    effects = r.analyse(30.0, FAILED)
    assert effects[0].details["decision"] == "continue" and r.failures == 1 and r.active
    effects = r.analyse(60.0, FAILED)  # failure_limit 2: the second one aborts
    assert [e.action for e in effects] == ["rollout-analysis", "rollout-abort"]
    assert effects[-1].route == {"weights": {"1": 100}, "shadow": {"3": 0.5}, "sticky_header": "x-user-id"}
    assert effects[-1].event == "aborted" and r.phase == "aborted" and "error_rate" in r.message
    assert effects[0].details["analysis"]["verdict"] == "fail"


def test_an_inconclusive_window_holds_the_step() -> None:
    r = rollout(shadow_first=None)
    r.start(0.0)
    r.analyse(30.0, PASSED)
    effects = r.analyse(60.0, UNSURE)
    assert effects[0].details["decision"] == "hold" and r.step == 0 and "holding" in r.message
    assert r.analyse(90.0, PASSED)[-1].action == "rollout-step" and r.step == 1


def test_pause_holds_and_resume_starts_a_fresh_window() -> None:
    r = rollout(shadow_first=None)
    r.start(0.0)
    effects = r.pause(10.0, "looking at a dashboard")
    assert effects[0].event == "paused" and r.phase == "paused" and not r.due(1000.0)
    assert r.weights() == {"1": 95, "2": 5}  # paused keeps the weights
    assert r.pause(11.0, "again") == []
    effects = r.resume(500.0, "alice")
    assert effects[0].action == "rollout-resume" and r.phase == "progressing"
    assert effects[0].route == {"weights": {"1": 95, "2": 5}, "shadow": {}, "sticky_header": None}
    assert r.stage_started_at == 500.0 and r.next_analysis_at == 530.0


def test_promote_skips_the_remaining_steps_and_abort_after_the_end_does_nothing() -> None:
    r = rollout()
    r.start(0.0)
    effects = r.promote(5.0, "bob")
    assert effects[0].route == "promote" and r.phase == "promoted"
    assert r.abort(6.0, "too late") == []


def test_on_success_pause_waits_for_a_promote() -> None:
    r = rollout(shadow_first=None, steps=[{"weight": 10, "pause_s": 0}], on_success="pause")
    r.start(0.0)
    effects = r.analyse(30.0, PASSED)
    assert effects[-1].action == "rollout-pause" and r.phase == "paused" and r.weights() == {"1": 90, "2": 10}
    assert r.promote(40.0)[0].route == "promote"


def test_a_saved_rollout_resumes_its_step_with_a_fresh_window() -> None:
    r = rollout(shadow_first=None)
    r.start(0.0)
    r.analyse(30.0, FAILED)
    r.analyse(60.0, PASSED)  # step 0 over: step 1 (50%)
    saved = Rollout.from_json(r.to_json())
    assert saved.to_json() == r.to_json()
    effects = saved.restarted(1000.0)
    assert effects[0].action == "rollout-restart" and saved.step == 1 and saved.failures == 1
    assert saved.stage_started_at == 1000.0 and saved.next_analysis_at == 1030.0
    assert saved.weights() == {"1": 50, "2": 50}


def test_a_paused_rollout_stays_paused_after_a_restart() -> None:
    r = rollout(shadow_first=None)
    r.start(0.0)
    r.pause(10.0, "by hand")
    saved = Rollout.from_json(r.to_json())
    effects = saved.restarted(1000.0)
    assert effects[0].action == "rollout-restart" and saved.phase == "paused" and saved.message == "paused: by hand"
    assert not saved.due(5000.0)


def test_the_json_has_the_phase_at_the_top_and_the_last_analysis() -> None:
    r = rollout(shadow_first=None)
    r.start(0.0)
    r.analyse(30.0, PASSED)
    doc = r.to_json()
    assert doc["phase"] == "progressing" and doc["to"] == "2" and doc["from"] == "1"
    assert doc["last_analysis"]["decision"] == "continue" and doc["weights"] == {"1": 95, "2": 5}
