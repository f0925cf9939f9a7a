"""Which release state a process serves from: its own state directory, a Redis fleet, or its host's store.

- One process, no ``state_store``: the state directory's routes.json, as always (no fleet).
- ``state_store = "redis://..."``: a replica of the Redis fleet (each worker of a multi-worker host
  too, named ``host:port/worker-i``), with the state directory as its local copy.
- A worker of a multi-worker host without ``state_store``: a replica of the fleet whose store is
  the supervisor's host store (gateway/host/state_server.py); only that store writes the state
  directory, and every admin change answers once every live worker applied it (read-your-writes).
"""

from __future__ import annotations

import asyncio
import socket

from gateway.host.roles import HostRole
from gateway.release.store import ModelRecord, StateStore
from gateway.settings import Settings
from gateway.state.fleet import Fleet
from gateway.state.redis_store import RedisState, read_secret

#: A host's workers reconcile with the host store this often (a missed message costs at most this).
HOST_RECONCILE_S = 0.5
#: How often a change's answer checks whether every worker applied it (a local IPC call: cheap).
HOST_POLL_S = 0.01


async def open_state(
    settings: Settings, role: HostRole | None, store: StateStore
) -> tuple[dict[str, ModelRecord], Fleet | None]:
    """The records to start from, and the fleet this process is a replica of (None: on its own)."""
    if settings.state_store:  # fleet mode: the shared store's state, else the local copy (docs/operations.md)
        password_file = settings.state_store_password_file
        password = await asyncio.to_thread(read_secret, password_file) if password_file else None
        replica = f"{socket.gethostname()}:{settings.port}"
        if role is not None:  # the workers of one host share its port: the process tells them apart
            replica += "/" + role.process
        fleet = Fleet(RedisState(settings.state_store, password=password), replica)
        return await fleet.open(await asyncio.to_thread(store.load)), fleet
    if role is not None and not role.is_engine:
        from gateway.host.state_client import HostStateClient  # pyzmq: only on a multi-process host

        backend = HostStateClient(role.run_dir)
        fleet = Fleet(backend, role.process, reconcile_s=HOST_RECONCILE_S, wait_always=True, poll_s=HOST_POLL_S)
        # The host store read routes.json at its start and is its only writer: the store's records win;
        # the file (read, never written here) serves only if the store does not answer.
        return await fleet.open(await asyncio.to_thread(store.load)), fleet
    return await asyncio.to_thread(store.load), None
