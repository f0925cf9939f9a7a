"""Warming up a freshly loaded version: its own samples when it ships them, else synthetic data.

A version directory may hold ``warmup/*.json``: V2 inference request bodies (JSON, the same
documents a client POSTs to ``/v2/models/{m}/infer``), run in file-name order. They are the
model owner's word that the model serves such requests, so a sample that does not decode
against the model's inputs, or that the model refuses, fails the load. Without them the
model is run on synthetic zeros (empty strings for BYTES). Synthetic data cannot suit every
model, so a failure there is only a warning: the version becomes READY, the failure is
counted (``tensorgate_model_warmup_failures_total``) and the cost model is fitted from the
first real calls instead. docs/configuration.md describes the layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from gateway.errors import BadRequest
from gateway.protocol.codec import decode_request
from runtimes.base import Runtime, RuntimeLoadError
from runtimes.warmup import CostModel, SampleFailedError, unmeasured, warm_up, warm_up_samples

log = logging.getLogger(__name__)

#: The folder of a version directory that holds its warm-up samples.
WARMUP_DIR = "warmup"
#: Bounds on what a load reads: samples are small requests, not data sets.
MAX_SAMPLES = 64
MAX_SAMPLE_BYTES = 16 * 1024 * 1024


def read_samples(
    directory: Path, runtime: Runtime, *, model: str, max_batch_size: int
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The version's own samples as ``(label, inputs)``, decoded and validated; [] when it has none.

    Raises RuntimeLoadError (reason ``warmup``) for anything wrong with them: a file that is
    not ``.json``, outside the folder (a link), too big, or not a valid request for the model.
    """
    folder = directory / WARMUP_DIR
    if not folder.is_dir():
        return []
    root = folder.resolve()
    entries = sorted(folder.iterdir())
    if len(entries) > MAX_SAMPLES:
        raise RuntimeLoadError(f"{WARMUP_DIR}/ holds {len(entries)} files, more than {MAX_SAMPLES}", "warmup")
    specs = {spec.name: spec for spec in runtime.inputs}
    outputs = [spec.name for spec in runtime.outputs]
    samples: list[tuple[str, dict[str, np.ndarray]]] = []
    for entry in entries:
        label = f"{WARMUP_DIR}/{entry.name}"
        # Only V2 JSON bodies: a file we would skip (an .npz, a typo) must not pass unnoticed.
        if entry.suffix != ".json":
            raise RuntimeLoadError(f"{label}: warm-up samples are V2 request bodies named *.json", "warmup")
        resolved = entry.resolve()
        if resolved.parent != root or not resolved.is_file():
            raise RuntimeLoadError(f"{label}: not a regular file inside {WARMUP_DIR}/", "warmup")
        try:
            size = resolved.stat().st_size
            if size > MAX_SAMPLE_BYTES:
                raise RuntimeLoadError(f"{label}: {size} bytes, over the {MAX_SAMPLE_BYTES} byte limit", "warmup")
            body = resolved.read_bytes()
        except OSError as exc:
            raise RuntimeLoadError(f"{label}: cannot be read ({exc.strerror})", "warmup") from exc
        try:
            request = decode_request(body, None, specs, outputs, model_name=model, max_batch_size=max_batch_size)
        except BadRequest as exc:
            raise RuntimeLoadError(f"{label} is not a valid request for the model: {exc.message}", "warmup") from exc
        samples.append((label, request.inputs))
    return samples


def warm_up_version(runtime: Runtime, directory: Path, *, model: str, version: int, max_batch_size: int) -> CostModel:
    """Warm ``runtime`` up and return its cost model (blocking).

    With samples: they must all run (else RuntimeLoadError). Without: synthetic data, and a
    failure returns an unmeasured cost model (``measured`` False) after a warning.
    """
    samples = read_samples(directory, runtime, model=model, max_batch_size=max_batch_size)
    if samples:
        try:
            return warm_up_samples(runtime, samples)
        except SampleFailedError as exc:
            raise RuntimeLoadError(str(exc), "warmup") from exc
    try:
        return warm_up(runtime)
    except Exception as exc:  # whatever the runtime raises: synthetic data may not suit the model
        log.warning(
            "model %r version %d: warm-up on synthetic data failed (%s); the version serves anyway and "
            "its cost model is fitted from its first real calls (ship %s/*.json samples to warm it up)",
            model, version, exc, WARMUP_DIR,
        )  # fmt: skip
        return unmeasured(runtime.inputs)
