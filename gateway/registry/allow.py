"""The artifact locations a registry may make the gateway download from (``registry_artifact_allow``).

A model version in MLflow names where its files are, and anyone who can write to MLflow can
point it anywhere: an internal web server, another team's bucket, reached with the gateway's
own credentials. So the location MLflow resolves a version to is checked against a list of
allowed places before anything is fetched. Each entry is ``scheme://host[:port][/prefix]``
(``s3://ml-models/prod``, ``https://artifacts.example.com/mlflow``), or ``scheme:`` alone for
locations without a host (``mlflow-artifacts:``, which MLflow resolves against the tracking
server). Hosts and buckets compare exactly (no wildcards); a prefix matches whole path segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from gateway.config_error import ConfigError

_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One allowed place: a scheme, a host ("" for host-less locations) and a path prefix."""

    scheme: str
    host: str
    prefix: tuple[str, ...] = ()

    def __str__(self) -> str:
        path = "/" + "/".join(self.prefix) if self.prefix else ""
        return f"{self.scheme}://{self.host}{path}" if self.host else f"{self.scheme}:{path}"

    def allows(self, scheme: str, host: str, segments: tuple[str, ...]) -> bool:
        """Whether a location with these parts is inside this rule."""
        return scheme == self.scheme and host == self.host and segments[: len(self.prefix)] == self.prefix


def _segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.split("/") if s and s != ".")


def parse_rule(text: str) -> AllowRule:
    """An ``registry_artifact_allow`` entry; ConfigError when it is not ``scheme://host[/prefix]`` or ``scheme:``."""
    entry = text.strip()
    parts = urlsplit(entry)
    scheme = parts.scheme.lower()
    bad = not _SCHEME.fullmatch(scheme) or parts.query or parts.fragment or ".." in _segments(parts.path)
    has_authority = entry[len(parts.scheme) + 1 :].startswith("//")
    if bad or (has_authority and not parts.netloc) or "@" in parts.netloc or "*" in entry:
        raise ConfigError(
            f"registry_artifact_allow: {entry!r} is not scheme://host[/prefix] or scheme: (no wildcards, no user)"
        )
    return AllowRule(scheme, parts.netloc.lower(), _segments(parts.path))


def parse_rules(text: str) -> tuple[AllowRule, ...]:
    """The comma-separated ``registry_artifact_allow`` setting."""
    return tuple(parse_rule(entry) for entry in text.split(",") if entry.strip())


def default_rules(tracking_uri: str) -> tuple[AllowRule, ...]:
    """The tracking server's own artifact store: ``mlflow-artifacts:`` (host-less or naming it) and its own URL."""
    parts = urlsplit(tracking_uri)
    host = parts.netloc.lower()
    rules = [AllowRule("mlflow-artifacts", "")]
    if host:
        rules += [AllowRule("mlflow-artifacts", host), AllowRule(parts.scheme.lower(), host)]
    return tuple(rules)


def allowed(uri: str, rules: tuple[AllowRule, ...]) -> bool:
    """Whether ``uri`` (a resolved artifact location) lies inside one of ``rules``."""
    decoded = uri
    for _ in range(3):  # an encoded "/" or ".." must not change what the prefix compares
        decoded = unquote(decoded)
    parts = urlsplit(decoded)
    segments = _segments(parts.path)
    if ".." in segments or "@" in parts.netloc:
        return False
    scheme, host = parts.scheme.lower(), parts.netloc.lower()
    return any(rule.allows(scheme, host, segments) for rule in rules)
