"""The fleet's release state in Redis: each model's route and seq, its history, load intents, replicas.

Keys (``tensorgate:`` prefix): ``model:{m}`` a hash (``seq``, ``route`` JSON, ``loaded`` JSON list
of versions a load call asked for), ``history:{m}`` a capped list of JSON entries, ``models`` the
set of names, ``replica:{id}`` each replica's report (JSON, expires unless refreshed), and the
pub/sub channel ``changes``. Every change runs one Lua script: compare the model's seq with the
one the change was based on, and only if equal write the route, append to the history, trim it
and publish, atomically; so two replicas racing get one winner, never a lost update.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis

from gateway.auth import SecretError
from gateway.release.history import HistoryEntry
from gateway.release.store import HISTORY_LIMIT, ModelRecord, parse_record
from gateway.state import StoredModel
from gateway.state.backend import STORE_ERRORS

__all__ = ["CHANNEL", "PREFIX", "STORE_ERRORS", "RedisState", "read_secret", "redact"]

log = logging.getLogger(__name__)

PREFIX = "tensorgate:"
CHANNEL = PREFIX + "changes"

# KEYS: model hash, history list, models set, channel. ARGV: expected seq, new seq, route JSON,
# loaded JSON, entry JSON, history limit, model name, message, then the replica's earlier history.
# Returns -1 on success, else the seq the store holds (the change was based on an older one).
# A model the store has never seen takes the first change whatever its base, with the history
# the replica kept locally (moving a single replica's state into a new fleet store keeps it).
_COMMIT = """
local stored = redis.call('HGET', KEYS[1], 'seq')
if stored then
  local current = tonumber(stored)
  if current ~= tonumber(ARGV[1]) then
    return current
  end
else
  for i = 9, #ARGV do
    redis.call('RPUSH', KEYS[2], ARGV[i])
  end
end
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'route', ARGV[3], 'loaded', ARGV[4])
redis.call('RPUSH', KEYS[2], ARGV[5])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
redis.call('SADD', KEYS[3], ARGV[7])
redis.call('PUBLISH', KEYS[4], ARGV[8])
return -1
"""
# KEYS: a lease or lock. ARGV: the holder's token, the lease in ms. 1 when extended (still its), else 0.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: a lease or lock. ARGV: the holder's token. Deleted only by its holder.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def redact(url: str) -> str:
    """The store's URL without its password, for logs and the admin API."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username + ':' if parts.username else ':'}***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisState:
    """The fleet's keys in Redis (a ``StateBackend``); every call raises one of ``STORE_ERRORS`` when Redis is away."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, password: str | None = None) -> None:
        self.url = redact(url)
        self._url, self._password, self._timeout_s = url, password, timeout_s
        # Short socket timeouts: a partitioned Redis must turn into a 503 quickly, never a hung admin call.
        # A password in the URL wins over ``password`` (state_store_password_file).
        self.client: aioredis.Redis = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0, password=password
        )
        self._commit = self.client.register_script(_COMMIT)
        self._extend = self.client.register_script(_EXTEND)
        self._release = self.client.register_script(_RELEASE)

    def connect(self) -> RedisState:
        """A connection pool of its own to the same Redis (the fleet's rollouts; the caller closes it)."""
        return RedisState(self._url, timeout_s=self._timeout_s, password=self._password)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self.client.ping()

    async def seq(self, name: str) -> int:
        """The model's latest seq in the store (0: never changed)."""
        raw = await self.client.hget(PREFIX + "model:" + name, "seq")
        return int(raw) if raw is not None else 0

    async def seqs(self) -> dict[str, int]:
        """Every stored model's latest seq."""
        members = await self.client.smembers(PREFIX + "models")
        names = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in members)
        if not names:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(PREFIX + "model:" + name, "seq")
            raws = await pipe.execute()
        return {name: int(raw) for name, raw in zip(names, raws, strict=True) if raw is not None}

    async def model(self, name: str) -> StoredModel | None:
        """The model's stored state; None when the fleet never changed it (or it is unreadable)."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(PREFIX + "model:" + name)
            pipe.lrange(PREFIX + "history:" + name, 0, -1)
            fields, history = await pipe.execute()
        if not fields:
            return None
        try:
            route = orjson.loads(fields[b"route"])
            record = parse_record({"route": route, "history": [orjson.loads(e) for e in history]})
            loaded = frozenset(int(v) for v in orjson.loads(fields.get(b"loaded", b"[]")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.error("the state store's record of model %r is invalid (%s): ignored", name, exc)
            return None
        return StoredModel(record, loaded)

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
        """Write the change if the model's seq is still ``expected``; else the seq the store holds.

        ``seed``: the store had no record of the model when this change began; send the earlier history.
        """
        seq = entry.seq
        earlier = [orjson.dumps(e.to_json()) for e in record.history[:-1][-HISTORY_LIMIT:]] if seed else []
        message = orjson.dumps({"model": name, "seq": seq, "replica": entry.replica})
        result = await self._commit(
            keys=[PREFIX + "model:" + name, PREFIX + "history:" + name, PREFIX + "models", CHANNEL],
            args=[
                expected,
                seq,
                orjson.dumps(record.route.to_json()),
                orjson.dumps(sorted(loaded)),
                orjson.dumps(entry.to_json()),
                HISTORY_LIMIT,
                name,
                message,
                *earlier,
            ],
        )
        return None if int(result) == -1 else int(result)

    async def report(self, replica: str, doc: dict[str, Any], ttl_s: float) -> None:
        """Publish this replica's report; it expires after ``ttl_s`` unless sent again."""
        await self.client.set(PREFIX + "replica:" + replica, orjson.dumps(doc), px=max(1, int(ttl_s * 1000)))

    async def replicas(self) -> list[dict[str, Any]]:
        """Every live replica's latest report, by replica id."""
        keys = [key async for key in self.client.scan_iter(match=PREFIX + "replica:*", count=1000)]
        if not keys:
            return []
        raws = await self.client.mget(keys)
        reports = [orjson.loads(raw) for raw in raws if raw is not None]
        return sorted(reports, key=lambda r: str(r.get("replica")))

    async def withdraw(self, replica: str) -> None:
        """Remove the replica's report (it stops: the live set shrinks at once)."""
        await self.client.delete(PREFIX + "replica:" + replica)

    async def changes(self) -> AsyncIterator[dict[str, Any] | None]:
        """The ``changes`` channel's messages; None once subscribed. Raises a store error when Redis goes."""
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            yield None
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    doc = orjson.loads(message["data"])
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(doc, dict):
                    yield doc
        finally:
            with contextlib.suppress(*STORE_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- plain keys ------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The key's value."""
        raw = await self.client.get(PREFIX + key)
        return _bytes(raw) if raw is not None else None

    async def put(self, key: str, value: bytes, *, ttl_ms: int | None = None, only_new: bool = False) -> bool:
        """SET, with PX and NX as asked; whether it was set."""
        return bool(await self.client.set(PREFIX + key, value, px=ttl_ms, nx=only_new))

    async def delete(self, key: str, *, token: str | None = None) -> bool:
        """DEL (with ``token``: only by its holder, in one script)."""
        if token is None:
            return bool(await self.client.delete(PREFIX + key))
        return bool(int(await self._release(keys=[PREFIX + key], args=[token])))

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        """PEXPIRE by its holder only (one script)."""
        return bool(int(await self._extend(keys=[PREFIX + key], args=[token, ttl_ms])))

    async def scan(self, prefix: str) -> dict[str, bytes]:
        """SCAN for the prefix, then MGET."""
        keys = [k async for k in self.client.scan_iter(match=PREFIX + prefix + "*", count=1000)]
        raws = await self.client.mget(keys) if keys else []
        found = {}
        for key, raw in zip(keys, raws, strict=True):
            if raw is not None:
                found[(key.decode() if isinstance(key, bytes) else str(key)).removeprefix(PREFIX)] = _bytes(raw)
        return found

    async def add_member(self, key: str, member: str) -> None:
        """SADD."""
        await self.client.sadd(PREFIX + key, member)

    async def members(self, key: str) -> list[str]:
        """SMEMBERS, sorted."""
        return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in await self.client.smembers(PREFIX + key))


def _bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode()


def read_secret(path: Path) -> str:
    """The state store's password from ``path`` (blocking); SecretError when unreadable or empty."""
    try:
        secret = path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"state_store_password_file: cannot read {path}: {exc}") from None
    if not secret:
        raise SecretError(f"state_store_password_file: {path} is empty")
    return secret
