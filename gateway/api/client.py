"""The client of an ASGI request, as the batcher sees it: still there, or gone."""

from __future__ import annotations

from starlette.types import Receive


class AsgiClient:
    """An ASGI request's client: its headers, and whether it is still there.

    Awaiting ``receive()`` is ASGI's only portable way to learn of a disconnect, and costs a
    task per waiting request. uvicorn's request cycle (the owner of ``receive``) also keeps a
    ``disconnected`` flag, which can be read for free; any other server, or a wrapped
    ``receive``, gets the task.
    """

    __slots__ = ("_headers", "_receive")

    def __init__(self, receive: Receive, headers: list[tuple[bytes, bytes]]) -> None:
        self._receive = receive
        self._headers = headers

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), decoded as latin-1, or None."""
        key = name.encode("latin-1")
        for header, value in self._headers:
            if header == key:
                return value.decode("latin-1")
        return None

    def gone(self) -> bool | None:
        """uvicorn's flag, or None when the server offers none."""
        return disconnected(self._receive)

    async def wait_gone(self) -> None:
        """Return once the server reports http.disconnect."""
        while (await self._receive())["type"] != "http.disconnect":
            pass


def disconnected(receive: Receive) -> bool | None:
    """Whether the client left before its answer was complete (uvicorn's flag); None when unknown."""
    flag = getattr(getattr(receive, "__self__", None), "disconnected", None)
    return flag if isinstance(flag, bool) else None
