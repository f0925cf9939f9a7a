"""A worker's connection to the host store (gateway/host/state_server.py): its fleet's ``StateBackend``.

One DEALER socket carries every request of the worker, each tagged with an id so that many tasks
(reconcile, reports, admin calls, rollouts) wait at once; a reader task hands each reply to its
caller. A request unanswered within ``timeout_s`` raises TimeoutError, so a missing store turns
into the fleet's 503, never a hung admin call. Change messages come on a SUB socket.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import orjson
import zmq
import zmq.asyncio

from gateway.host.roles import state_endpoint, state_events_endpoint
from gateway.host.state_server import TOPIC
from gateway.release.history import HistoryEntry
from gateway.release.store import HISTORY_LIMIT, ModelRecord, parse_record
from gateway.state import StoredModel
from gateway.state.backend import StoreWriteFailed

#: Reports are plain keys with an expiry: ``replica:{id}``.
REPLICA = "replica:"


class HostStateClient:
    """The host store's calls for one worker (a ``StateBackend``); TimeoutError or ConnectionError when away."""

    def __init__(self, run_dir: Path, *, timeout_s: float = 2.0, commit_timeout_s: float = 10.0) -> None:
        self.run_dir = run_dir
        self.url = "host:" + state_endpoint(run_dir)
        self._timeout_s = timeout_s
        # A commit writes and fsyncs routes.json before it answers: give a slow disk time, so that a
        # change saved is rarely answered as "nothing changed" (the reconcile would apply it anyway).
        self._commit_timeout_s = commit_timeout_s
        self._context = zmq.asyncio.Context()
        self._dealer = self._context.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.LINGER, 0)
        self._dealer.connect(state_endpoint(run_dir))
        self._ids = itertools.count(1)
        self._waiting: dict[bytes, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    def connect(self) -> HostStateClient:
        """Another connection to the same store (the fleet's rollouts; the caller closes it)."""
        return HostStateClient(self.run_dir, timeout_s=self._timeout_s, commit_timeout_s=self._commit_timeout_s)

    async def close(self) -> None:
        """Stop the reader, fail what still waits, close the sockets."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the host state client is closed"))
        self._waiting.clear()
        self._dealer.close(linger=0)
        self._context.destroy(linger=0)

    # -- requests ------------------------------------------------------------------------------

    async def _call(self, op: str, **fields: Any) -> Any:
        """Send one request and wait for its answer (at most ``timeout_s``)."""
        if self._closed:
            raise ConnectionError("the host state client is closed")
        if self._reader is None:  # started on first use: the socket belongs to the running loop
            self._reader = asyncio.create_task(self._read(), name="host-state-client")
        request_id = str(next(self._ids)).encode()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        timeout_s = self._commit_timeout_s if op == "commit" else self._timeout_s
        try:
            await self._dealer.send_multipart([request_id, orjson.dumps({"op": op, **fields})])
            reply = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise TimeoutError(f"the host state store did not answer {op} within {timeout_s:g} s") from None
        except zmq.ZMQError as exc:
            raise ConnectionError(f"the host state store: {exc}") from None
        finally:
            self._waiting.pop(request_id, None)
        if "error" in reply:
            if reply.get("write"):
                raise StoreWriteFailed(f"the host's state directory cannot be written: {reply['error']}")
            raise ConnectionError(f"the host state store refused {op}: {reply['error']}")
        return reply["ok"]

    async def _read(self) -> None:
        while True:
            frames = await self._dealer.recv_multipart()
            if len(frames) != 2:
                continue
            future = self._waiting.get(frames[0])
            if future is None or future.done():  # answered after its caller gave up
                continue
            try:
                future.set_result(orjson.loads(frames[1]))
            except ValueError as exc:
                future.set_exception(ConnectionError(f"the host state store's answer is unreadable: {exc}"))

    # -- records -------------------------------------------------------------------------------

    async def seqs(self) -> dict[str, int]:
        """Every stored model's latest seq."""
        return {str(name): int(seq) for name, seq in (await self._call("seqs")).items()}

    async def model(self, name: str) -> StoredModel | None:
        """The model's stored state; None when the host never changed it."""
        doc = await self._call("model", name=name)
        if doc is None:
            return None
        record = parse_record({"route": doc["route"], "history": doc["history"]})
        return StoredModel(record, frozenset(int(v) for v in doc["loaded"]))

    async def commit(
        self,
        name: str,
        expected: int,
        record: ModelRecord,
        entry: HistoryEntry,
        loaded: Iterable[int],
        *,
        seed: bool = False,
    ) -> int | None:
        """Compare-and-set on the model's seq; None once saved, else the seq the store holds."""
        earlier = [e.to_json() for e in record.history[:-1][-HISTORY_LIMIT:]] if seed else []
        held = await self._call(
            "commit",
            name=name,
            expected=expected,
            route=record.route.to_json(),
            entry=entry.to_json(),
            loaded=sorted(loaded),
            earlier=earlier,
        )
        return None if held is None else int(held)

    async def changes(self) -> AsyncIterator[dict[str, Any] | None]:
        """The store's change messages; None once subscribed (a message sent before that is reconciled)."""
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        try:
            sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
            sub.connect(state_events_endpoint(self.run_dir))
            yield None
            while True:
                frames = await sub.recv_multipart()
                if len(frames) != 2:
                    continue
                try:
                    doc = orjson.loads(frames[1])
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    yield doc
        except zmq.ZMQError as exc:
            raise ConnectionError(f"the host state store's changes: {exc}") from None
        finally:
            sub.close(linger=0)

    # -- reports -------------------------------------------------------------------------------

    async def report(self, replica: str, doc: dict[str, Any], ttl_s: float) -> None:
        """Publish this worker's report; it expires after ``ttl_s`` unless sent again."""
        await self.put(REPLICA + replica, orjson.dumps(doc), ttl_ms=max(1, int(ttl_s * 1000)))

    async def replicas(self) -> list[dict[str, Any]]:
        """Every live worker's latest report, by replica id."""
        reports = [orjson.loads(raw) for raw in (await self.scan(REPLICA)).values()]
        return sorted(reports, key=lambda r: str(r.get("replica")))

    async def withdraw(self, replica: str) -> None:
        """Remove this worker's report (it stops)."""
        await self.delete(REPLICA + replica)

    # -- plain keys ----------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The key's value (None: absent or expired)."""
        value = await self._call("get", key=key)
        return None if value is None else str(value).encode()

    async def put(self, key: str, value: bytes, *, ttl_ms: int | None = None, only_new: bool = False) -> bool:
        """Set the key; with ``only_new``, only if absent; whether it was set."""
        return bool(await self._call("put", key=key, value=value.decode(), ttl_ms=ttl_ms, only_new=only_new))

    async def delete(self, key: str, *, token: str | None = None) -> bool:
        """Delete the key (with ``token``: only while its value is ``token``)."""
        return bool(await self._call("delete", key=key, token=token))

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        """Expire the key ``ttl_ms`` from now if its value is still ``token``."""
        return bool(await self._call("extend", key=key, token=token, ttl_ms=ttl_ms))

    async def scan(self, prefix: str) -> dict[str, bytes]:
        """Every live key starting with ``prefix``, with its value."""
        return {str(k): str(v).encode() for k, v in (await self._call("scan", prefix=prefix)).items()}

    async def add_member(self, key: str, member: str) -> None:
        """Add ``member`` to the set ``key``."""
        await self._call("add_member", key=key, member=member)

    async def members(self, key: str) -> list[str]:
        """The members of the set ``key``, sorted."""
        return [str(m) for m in await self._call("members", key=key)]
