"""The engine's catalogue: a version loaded once for every worker, unloaded when the last one lets go."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest

from gateway.engine.catalogue import EngineModels
from gateway.loader import load_runtime
from gateway.models import ModelManager
from gateway.registry.base import Artifact
from gateway.registry.config import ModelConfig
from gateway.registry.local import LocalRegistry
from runtimes.base import Runtime, RuntimeLoadError
from runtimes.devices import Devices
from tests.onnx_models import identity, write_model


def engine_models(root: Path, loads: list[str]) -> EngineModels:
    """A catalogue over ``root`` whose runtime loads are counted in ``loads``."""
    devices = Devices(0, False)

    def counted(artifact: Artifact, config: ModelConfig) -> Runtime:
        loads.append(f"{artifact.model}/{artifact.version}")
        return load_runtime(devices, artifact, config)

    manager = ModelManager(LocalRegistry(root), counted, rng=random.Random(0))
    manager.started = True
    return EngineModels(manager)


def test_loaded_once_held_by_each_worker_and_unloaded_by_the_last(tmp_path: Path) -> None:
    write_model(tmp_path, "ident", 1, identity("FP32"), "max_batch_size = 4\n")
    loads: list[str] = []

    async def scenario() -> None:
        models = engine_models(tmp_path, loads)
        first, second = await asyncio.gather(models.load(b"w0", "ident", 1), models.load(b"w1", "ident", 1))
        assert first == second and first["batched"] is True
        assert first["inputs"] == [["INPUT0", "FP32", [-1, 4]]]
        assert loads == ["ident/1"]  # one session for both workers
        assert models.held() == {("ident", 1): 2}
        mv = models.servable("ident", 1)
        assert mv is not None and mv.batcher is not None
        rows = await mv.batcher.submit({"INPUT0": np.ones((1, 4), np.float32)}, ["OUTPUT0"], 1)
        np.testing.assert_array_equal(rows[0], np.ones((1, 4), np.float32))
        assert ("ident", "1") in models.stats()

        await models.unload(b"w0", "ident", 1)
        assert models.servable("ident", 1) is mv  # w1 still holds it
        await models.release_worker(b"w1")  # a worker gone silent lets go of everything
        assert models.servable("ident", 1) is None
        assert models.held() == {}
        await models.load(b"w2", "ident", 1)  # asked again: loaded again
        assert loads == ["ident/1", "ident/1"]
        await models.manager.close()

    asyncio.run(scenario())


def test_a_version_that_cannot_load_is_a_load_error(tmp_path: Path) -> None:
    write_model(tmp_path, "ident", 1, identity("FP32"))
    (tmp_path / "ident" / "1" / "model.onnx").write_bytes(b"not onnx")

    async def scenario() -> None:
        models = engine_models(tmp_path, [])
        with pytest.raises(RuntimeLoadError):
            await models.load(b"w0", "ident", 1)
        assert models.held() == {}
        await models.manager.close()

    asyncio.run(scenario())
