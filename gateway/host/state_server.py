"""The host's release state: one store, in the supervisor, shared by every worker (docs/operations.md).

Without a ``state_store``, a multi-worker host keeps its release state here: each model's record
(route and history, with its seq) and load intents, every worker's report (expiring unless
refreshed), and plain keys with an optional expiry (the rollouts' documents, leases and published
counters). Workers are replicas of a fleet whose store this is (gateway/host/state_client.py is
their ``StateBackend``), so convergence, ``?wait=all`` and rollouts run the same code as with Redis.

Requests come on a ROUTER socket (``state_endpoint``): ``[id, JSON]`` in, ``[id, JSON]`` out, each
answered by a task of its own. A commit is a compare-and-set on the model's seq; the winner's
records are written to ``<state_dir>/routes.json`` (gateway/release/store.py, today's format, written
atomically) before the commit answers or anything changes here, so a later single-process run (or
the next start of the host) starts from exactly what was answered. Rollouts (``rollout:{m}``
keys) are written to ``<state_dir>/rollouts.json`` the same way. Each commit publishes
``[b"changes", {"model", "seq", "replica"}]`` on a PUB socket (``state_events_endpoint``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import zmq
import zmq.asyncio

from gateway.host.roles import state_endpoint, state_events_endpoint
from gateway.release.history import HistoryEntry
from gateway.release.store import HISTORY_LIMIT, ModelRecord, StateStore, parse_record, write_atomic
from routing.route import RouteError

log = logging.getLogger(__name__)

#: The rollouts' file and format (the same as gateway.rollouts.runner's: a single process reads it).
ROLLOUTS_FILE = "rollouts.json"
ROLLOUTS_FORMAT = 1
#: Keys holding a rollout's document (``rollout:{model}``), persisted to ``rollouts.json``.
ROLLOUT_KEY = "rollout:"
#: The set of models with a rollout (gateway.rollouts.fleet's ``ROLLOUTS``).
ROLLOUT_SET = "rollouts"
#: The topic of change messages on the PUB socket.
TOPIC = b"changes"


class HostStateServer:
    """The supervisor's host store; ``start`` loads the state directory and binds, ``close`` stops."""

    def __init__(
        self,
        run_dir: Path,
        state_dir: Path,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_dir = run_dir
        self.state_dir = state_dir
        self._store = StateStore(state_dir)
        self._monotonic = monotonic
        self._records: dict[str, ModelRecord] = {}
        self._loaded: dict[str, frozenset[int]] = {}
        self._keys: dict[str, tuple[str, float | None]] = {}  # key -> (value, expiry on the monotonic clock)
        self._sets: dict[str, set[str]] = {}
        self._commit_lock = asyncio.Lock()  # one commit at a time: compare, write the file, then apply
        self._rollouts_lock = asyncio.Lock()
        self._context: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._serve: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load routes.json and rollouts.json from the state directory, bind both sockets, serve."""
        self._records = await asyncio.to_thread(self._store.load)
        for name, doc in (await asyncio.to_thread(self._read_rollouts)).items():
            self._keys[ROLLOUT_KEY + name] = (doc, None)
            self._sets.setdefault(ROLLOUT_SET, set()).add(name)
        self._context = zmq.asyncio.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.bind(state_endpoint(self.run_dir))
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(state_events_endpoint(self.run_dir))
        self._serve = asyncio.create_task(self._serve_loop(), name="host-state")
        log.info(
            "host state store: %d model record(s) from %s, serving %s",
            len(self._records),
            self._store.path,
            state_endpoint(self.run_dir),
        )

    async def close(self) -> None:
        """Stop serving: finish the requests being answered (a commit's write completes), close the sockets."""
        if self._serve is not None:
            self._serve.cancel()
            await asyncio.gather(self._serve, return_exceptions=True)
            self._serve = None
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        for socket in (self._router, self._pub):
            if socket is not None:
                socket.close(linger=0)
        self._router = self._pub = None
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

    # -- serving -------------------------------------------------------------------------------

    async def _serve_loop(self) -> None:
        assert self._router is not None
        while True:
            frames = await self._router.recv_multipart()
            if len(frames) != 3:  # [peer, id, body]: anything else is not ours
                continue
            task = asyncio.create_task(self._answer(frames[0], frames[1], frames[2]))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _answer(self, peer: bytes, request_id: bytes, body: bytes) -> None:
        try:
            doc = orjson.loads(body)
            reply: dict[str, Any] = {"ok": await self.handle(doc)}
        except OSError as exc:  # the state directory cannot be written: nothing changed
            reply = {"error": str(exc), "write": True}
        except (KeyError, TypeError, ValueError, RouteError) as exc:
            reply = {"error": f"bad request: {exc!r}"}
        except Exception as exc:  # a bug answers an error (the worker logs it) rather than a timeout
            log.exception("host state store: a request failed")
            reply = {"error": f"internal error: {exc!r}"}
        if self._router is not None:
            await self._router.send_multipart([peer, request_id, orjson.dumps(reply)])

    async def handle(self, doc: dict[str, Any]) -> Any:
        """One request's answer (KeyError, TypeError, ValueError when malformed; OSError when unsaved)."""
        op = doc["op"]
        if op == "commit":
            return await self._commit(doc)
        if op == "put":
            return await self._put(doc)
        reader = self._reads.get(op)
        if reader is None:
            raise ValueError(f"unknown op {op!r}")
        return reader(doc)

    @property
    def _reads(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """The requests answered at once (no file to write)."""
        return {
            "seqs": lambda doc: {name: record.seq for name, record in sorted(self._records.items())},
            "model": self._model,
            "get": lambda doc: self._get(str(doc["key"])),
            "delete": self._delete,
            "extend": self._extend,
            "scan": self._scan,
            "add_member": lambda doc: self._sets.setdefault(str(doc["key"]), set()).add(str(doc["member"])),
            "members": lambda doc: sorted(self._sets.get(str(doc["key"]), set())),
        }

    def _model(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        name = str(doc["name"])
        record = self._records.get(name)
        if record is None:
            return None
        return {
            "route": record.route.to_json(),
            "history": [e.to_json() for e in record.history],
            "loaded": sorted(self._loaded.get(name, frozenset())),
        }

    def _delete(self, doc: dict[str, Any]) -> bool:
        key, token, value = str(doc["key"]), doc.get("token"), self._get(str(doc["key"]))
        if value is None or (token is not None and value != token):
            return False
        del self._keys[key]
        return True

    def _extend(self, doc: dict[str, Any]) -> bool:
        key = str(doc["key"])
        value = self._get(key)
        if value is None or value != doc["token"]:
            return False
        self._keys[key] = (value, self._monotonic() + int(doc["ttl_ms"]) / 1000)
        return True

    def _scan(self, doc: dict[str, Any]) -> dict[str, str]:
        prefix = str(doc["prefix"])
        return {k: v for k in sorted(self._keys) if k.startswith(prefix) and (v := self._get(k)) is not None}

    # -- records -------------------------------------------------------------------------------

    async def _commit(self, doc: dict[str, Any]) -> int | None:
        """Compare-and-set: the seq held when ``expected`` is stale, else None once saved and published."""
        name, expected = str(doc["name"]), int(doc["expected"])
        entry = HistoryEntry.from_json(doc["entry"])
        async with self._commit_lock:
            current = self._records.get(name)
            if current is not None:
                if current.seq != expected:
                    return current.seq
                earlier = list(current.history)
            else:  # the first change of a model the host never saw brings the worker's earlier history
                earlier = [HistoryEntry.from_json(e) for e in doc.get("earlier") or []]
            route = parse_record({"route": doc["route"], "history": []}).route
            record = ModelRecord(route, [*earlier, entry][-HISTORY_LIMIT:])
            records = {**self._records, name: record}
            # Saved before anything changes or anyone is told: what answered is what a restart reads.
            await asyncio.to_thread(self._store.save, records)
            self._records = records
            self._loaded[name] = frozenset(int(v) for v in doc.get("loaded") or [])
            if self._pub is not None:
                message = orjson.dumps({"model": name, "seq": entry.seq, "replica": entry.replica})
                await self._pub.send_multipart([TOPIC, message])
            return None

    # -- plain keys ----------------------------------------------------------------------------

    def _get(self, key: str) -> str | None:
        found = self._keys.get(key)
        if found is None:
            return None
        value, expiry = found
        if expiry is not None and self._monotonic() >= expiry:
            del self._keys[key]
            return None
        return value

    async def _put(self, doc: dict[str, Any]) -> bool:
        key, value = str(doc["key"]), str(doc["value"])
        if key.startswith(ROLLOUT_KEY):
            orjson.loads(value)  # ValueError (a bad request) before it is kept: rollouts.json stays writable
        if doc.get("only_new") and self._get(key) is not None:
            return False
        ttl_ms = doc.get("ttl_ms")
        self._keys[key] = (value, None if ttl_ms is None else self._monotonic() + int(ttl_ms) / 1000)
        if key.startswith(ROLLOUT_KEY):
            await self._save_rollouts()
        return True

    def _read_rollouts(self) -> dict[str, str]:
        """The saved rollouts' documents by model (an unreadable file is logged and ignored, as one process does)."""
        path = self.state_dir / ROLLOUTS_FILE
        try:
            doc = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): starting without saved rollouts", path, exc)
            return {}
        entries = doc.get("rollouts") if isinstance(doc, dict) else None
        if not isinstance(entries, dict):
            log.error("%s is not a rollouts document: ignored", path)
            return {}
        return {str(name): orjson.dumps(entry).decode() for name, entry in entries.items() if isinstance(entry, dict)}

    async def _save_rollouts(self) -> None:
        """Every rollout's document to rollouts.json (a failure is logged: the rollout goes on, as with Redis)."""
        async with self._rollouts_lock:
            rollouts = {
                key.removeprefix(ROLLOUT_KEY): orjson.loads(value)
                for key, (value, _) in sorted(self._keys.items())
                if key.startswith(ROLLOUT_KEY)
            }
            data = json.dumps({"format": ROLLOUTS_FORMAT, "rollouts": rollouts}, indent=1, sort_keys=True).encode()
            try:
                await asyncio.to_thread(write_atomic, self.state_dir, ROLLOUTS_FILE, data)
            except OSError as exc:
                log.error("rollouts could not be saved to %s: %s", self.state_dir / ROLLOUTS_FILE, exc)
