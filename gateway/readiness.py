"""The readiness policy: when a model, and the server, can serve (Triton's strict readiness or not)."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.versions import Model, VersionState


def model_ready(model: Model) -> bool:
    """Whether the model's route can serve: its primary version is READY."""
    if model.route is None:
        return False
    mv = model.versions.get(model.route.primary)
    return mv is not None and mv.state is VersionState.READY


def not_ready(models: Iterable[Model], started: bool, strict: bool = True) -> str | None:
    """Why the server is not ready (naming the model and version at fault), or None when it is.

    Strict is Triton's default readiness: a pod whose routed version failed to load never
    becomes ready, so a rollout with a broken model stops instead of serving errors. Not
    strict: ready once every routed version of at least one model is READY, so one broken
    candidate does not take a pod that serves everything else out of its Service.
    """
    if not started:
        return "models are loading"
    faults: list[str] = []
    serving = 0
    for model in models:
        route = model.route
        if route is None:
            continue
        found = [_routed_fault(model, v) for v, w in sorted(route.weights.items()) if w > 0]
        model_faults = [f for f in found if f is not None]
        faults += model_faults
        serving += not model_faults
    if strict:
        return "; ".join(faults) if faults else None
    if serving:
        return None
    return "no model can serve" + (f": {'; '.join(faults)}" if faults else "")


def _routed_fault(model: Model, version: int) -> str | None:
    mv = model.versions.get(version)
    if mv is None:
        return f"routed version {version} of model {model.name!r} is not loaded"
    if mv.state is VersionState.READY:
        return None
    # The probe is public: the load error's text stays under /admin (issue 20, item 6).
    where = " (reason in /admin/models)" if mv.state is VersionState.FAILED else ""
    return f"routed version {version} of model {model.name!r} is {mv.state.value}{where}"
