"""One inference, transport aside: validate, pick the version, decode, run, encode."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.errors import BadRequest, InternalError
from gateway.models import ModelManager
from gateway.protocol.codec import decode_request, encode_response
from gateway.registry.names import parse_version
from runtimes.base import InferenceFailedError, InvalidInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InferResult:
    """An encoded response and what the transport must say about it."""

    body: bytes
    #: Length of the JSON header when binary outputs follow it, else None.
    header_length: int | None
    model_version: str
    role: str
    #: The request's id (from the body, else the ``x-request-id`` header), echoed back.
    request_id: str | None


class InferenceService:
    """Serves inference requests from the models the manager holds."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    async def infer(
        self,
        model_name: str,
        version_text: str | None,
        body: bytes,
        header_length: str | None,
        request_id: str | None = None,
    ) -> InferResult:
        """Run one request; ``version_text`` pins a version, None routes by the model's route."""
        version = None if version_text is None else parse_version(version_text)
        mv, role = self._manager.serving(model_name, version)
        request = decode_request(
            body,
            header_length,
            mv.inputs,
            mv.outputs,
            model_name=model_name,
            max_batch_size=mv.config.max_batch_size,
        )
        executor = mv.executor
        assert executor is not None  # READY versions always have one
        names = [name for name, _ in request.outputs]
        try:
            arrays = await executor.run(request.inputs, names, request.elements)
        except InvalidInputError as exc:
            raise BadRequest(str(exc)) from None
        except InferenceFailedError as exc:
            log.error("model %r version %d failed a request: %s", model_name, mv.version, exc)
            raise InternalError("inference failed") from None
        outputs = [
            (mv.outputs[name], array, binary) for (name, binary), array in zip(request.outputs, arrays, strict=True)
        ]
        response_id = request.id if request.id is not None else request_id
        body_out, json_length = encode_response(model_name, str(mv.version), response_id, outputs)
        return InferResult(body_out, json_length, str(mv.version), role, response_id)
