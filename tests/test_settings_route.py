"""Server settings precedence, and the route's weighted pick."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from gateway.config_error import ConfigError
from gateway.settings import Settings, load_settings
from routing.route import Route


def test_defaults() -> None:
    assert load_settings(environ={}) == Settings()


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "tensorgate.toml"
    config.write_text('repository = "models"\nport = 9000\nhost = "0.0.0.0"\nmax_body_bytes = 2048\n')
    settings = load_settings(
        config,
        environ={"TENSORGATE_PORT": "9100", "TENSORGATE_LOG_LEVEL": "debug"},
        overrides={"port": 9200, "host": None},
    )
    assert settings.repository == tmp_path / "models"  # relative to the file
    assert settings.port == 9200 and settings.host == "0.0.0.0"
    assert settings.log_level == "debug" and settings.max_body_bytes == 2048


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("port = 1234\n")
    assert load_settings(environ={"TENSORGATE_CONFIG": str(config)}).port == 1234


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("prot = 1\n", {}, "prot: unknown key"),
        ("port = 'x'\n", {}, "port: expected int"),
        ("workers = 2.5\n", {}, "workers: expected auto or an int, got 2.5"),
        ("workers = true\n", {}, "workers: expected auto or an int, got true$"),
        ("max_connections = 100.5\n", {}, "max_connections: expected int, got 100.5"),
        ("", {"TENSORGATE_PORT": "eighty"}, "TENSORGATE_PORT: port: expected int"),
        ("", {"TENSORGATE_PORT": "70000"}, "port: must be 0-65535"),
        ("", {"TENSORGATE_LOG_LEVEL": "loud"}, "log_level"),
        ("max_body_bytes = 10\n", {}, "max_body_bytes"),
    ],
)
def test_settings_errors(tmp_path: Path, text: str, environ: dict[str, str], message: str) -> None:
    config = tmp_path / "t.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config, environ=environ)


def test_latest_route_never_draws() -> None:
    def no_draw() -> float:
        raise AssertionError("a single-version route must not draw")

    route = Route.latest(3)
    assert route.draw(no_draw) == 3 and route.primary == 3


def test_weighted_draw_follows_weights() -> None:
    route = Route({1: 90, 2: 10, 3: 0}, seq=4)
    rng = random.Random(7)
    counts = Counter(route.draw(rng.random) for _ in range(10_000))
    assert set(counts) == {1, 2}
    assert 850 <= counts[2] <= 1150  # 10% +- 3 sigma
    assert route.primary == 1
    assert route.pick(89.999) == 1 and route.pick(90.0) == 2


@pytest.mark.parametrize("weights", [{}, {1: 50}, {1: 101, 2: -1}, {1: 60, 2: 60}])
def test_invalid_routes(weights: dict[int, int]) -> None:
    with pytest.raises(ValueError):
        Route(weights)


def test_a_whole_toml_float_is_an_int(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("max_connections = 100.0\n")
    settings = load_settings(config, environ={})
    assert settings.max_connections == 100 and isinstance(settings.max_connections, int)
