"""The statistics extension's answer (REST ``.../stats`` and gRPC ``ModelStatistics``), for one process or a host."""

from __future__ import annotations

from typing import Any

from gateway.core import Core
from gateway.models import Model, ModelManager, ModelVersion, VersionState
from gateway.registry.names import parse_version


def stats_versions(manager: ModelManager, model: str | None, version: str | None) -> list[tuple[Model, ModelVersion]]:
    """The READY versions a statistics call names: all models', one model's, or one version (404 if unknown)."""
    models = [manager.model(model)] if model else manager.models()
    chosen: list[tuple[Model, ModelVersion]] = []
    for each in models:
        if version:
            versions = [manager.version(each, parse_version(version))]
        else:
            versions = [each.versions[v] for v in sorted(each.versions)]
        chosen.extend((each, mv) for mv in versions if mv.state is VersionState.READY)
    return chosen


async def stats_entries(core: Core, versions: list[tuple[Model, ModelVersion]]) -> list[dict[str, Any]]:
    """Triton's ``model_stats`` entries of ``versions``: this process's counts, or the host's summed."""
    if core.host is None or not versions:
        return [mv.stats.to_triton(model.name, str(mv.version)) for model, mv in versions]
    host = await core.host.stats()
    entries = []
    for model, mv in versions:
        entry = host.get((model.name, str(mv.version)))
        entries.append(entry if entry is not None else mv.stats.to_triton(model.name, str(mv.version)))
    return entries
