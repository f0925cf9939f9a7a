"""The client of an ASGI request, as the batcher sees it: still there, or gone."""

from __future__ import annotations

from starlette.types import Receive


class AsgiClient:
    """An ASGI request's client, for the batcher to ask whether it is still there.

    Awaiting ``receive()`` is ASGI's only portable way to learn of a disconnect, and costs a
    task per waiting request. uvicorn's request cycle (the owner of ``receive``) also keeps a
    ``disconnected`` flag, which can be read for free; any other server, or a wrapped
    ``receive``, gets the task.
    """

    __slots__ = ("_receive",)

    def __init__(self, receive: Receive) -> None:
        self._receive = receive

    def gone(self) -> bool | None:
        """uvicorn's flag, or None when the server offers none."""
        flag = getattr(getattr(self._receive, "__self__", None), "disconnected", None)
        return flag if isinstance(flag, bool) else None

    async def wait_gone(self) -> None:
        """Return once the server reports http.disconnect."""
        while (await self._receive())["type"] != "http.disconnect":
            pass
