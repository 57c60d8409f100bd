"""The cluster's shared state in etcd, through aetcd (an asyncio etcd v3 client on grpc: it runs on corrald's own event
loop, with no thread per call).

Keys (all under ``/corral/``; values are JSON of corral.cluster.models unless said):
  ``secret``             the cluster's secret: peers authenticate to each other with it (corral.cluster.peer)
  ``config``             ClusterSettings: what every member uses alike (the HA repository)
  ``hosts/<host>``       HostRecord, published by the host itself (kept when it dies: `host ls` shows it down)
  ``alive/<host>``       empty, on the host's lease: present while the host renews it (its heartbeat)
  ``drain/<host>``       present while an admin drains the host: it takes no new VM
  ``vms/<vm>``           VMPlacement: which host holds the VM; created in a transaction when the VM is placed
  ``hostrev/<host>``     bumped by every placement onto the host: the transaction of a placement compares it, so
                         two launches racing for the host's last room cannot both get it

A read of the whole prefix is one range request: one revision, a consistent picture of the cluster.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions

from corral.cluster.models import ClusterSettings, HostRecord, HostState, VMPlacement
from corral.errors import Conflict, CorralError, InvalidInput

PREFIX = b"/corral/"


class EtcdUnavailable(CorralError):
    """etcd does not answer: the cluster's state cannot be read or changed now (the host's VMs keep running)."""


def key(*parts: str) -> bytes:
    return PREFIX + "/".join(parts).encode()


def parse_endpoints(urls: str) -> list[tuple[str, int]]:
    """``http://a:2379,http://b:2379``: each, checked."""
    found = [parse_endpoint(u.strip()) for u in urls.split(",") if u.strip()]
    if not found:
        raise InvalidInput("no etcd address given: give http://HOST:PORT (several: comma-separated)")
    return found


def parse_endpoint(url: str) -> tuple[str, int]:
    """``http://10.0.0.1:2379`` (or ``10.0.0.1:2379``) as (host, port); a bad one is InvalidInput, one line."""
    s = urlsplit(url if "://" in url else f"http://{url}")
    if s.scheme not in ("http", "") or not s.hostname:
        raise InvalidInput(f"{url!r} is not an etcd address: give it as http://HOST:PORT (client port, e.g. 2379)")
    try:
        port = s.port or 2379
    except ValueError:
        raise InvalidInput(f"{url!r} has a bad port: give the etcd address as http://HOST:PORT") from None
    return s.hostname, port


@dataclass
class Snapshot:
    """The whole cluster at one etcd revision."""

    secret: str
    hosts: dict[str, HostRecord]
    alive: set[str]
    draining: set[str]
    placements: dict[str, VMPlacement]
    hostrev: dict[str, int]  # mod revision of hostrev/<host> (0: never placed on)
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    revisions: dict[str, int] = field(default_factory=dict)  # vms/<vm> -> its mod revision

    def host_state(self, name: str) -> HostState:
        if name not in self.alive:
            return HostState.DOWN
        return HostState.DRAINING if name in self.draining else HostState.READY

    def host_list(self) -> list[HostRecord]:
        """Every member, with its state as the cluster sees it now (not as it last said)."""
        return [h.model_copy(update={"state": self.host_state(n)}) for n, h in sorted(self.hosts.items())]


class Registry:
    """One host's connection to etcd: to one of its members (``endpoints``, comma-separated), the next one tried when
    the one in use does not answer, so a three-member etcd keeps serving while one member is down."""

    def __init__(self, endpoints: str, timeout: float = 5.0) -> None:
        self.endpoint = endpoints
        self.members = parse_endpoints(endpoints)
        self.timeout = int(max(1, timeout))
        self._at = 0
        self.client = self._connect(0)

    def _connect(self, i: int) -> aetcd.Client:
        host, port = self.members[i % len(self.members)]
        return aetcd.Client(host=host, port=port, timeout=self.timeout)

    async def close(self) -> None:
        await self.client.close()

    async def _call(self, call: Callable[[aetcd.Client], Awaitable[Any]]) -> Any:
        """``call`` on the member in use; on a connection failure, on each other member in turn."""
        last: Exception | None = None
        for _ in range(len(self.members)):
            try:
                return await call(self.client)
            except (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError) as exc:
                last = exc
                if len(self.members) == 1:
                    break
                with contextlib.suppress(Exception):
                    await self.client.close()
                self._at += 1
                self.client = self._connect(self._at)
        raise EtcdUnavailable(f"etcd at {self.endpoint} does not answer: check it runs "
                              "(`corral host ls` works again once it does)") from last

    # -- reads ----------------------------------------------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        kvs = await self._call(lambda c: c.get_prefix(PREFIX))
        snap = Snapshot("", {}, set(), set(), {}, {})
        for kv in kvs:
            parts = kv.key[len(PREFIX):].decode().split("/", 1)
            kind, name = parts[0], parts[1] if len(parts) > 1 else ""
            if kind == "secret":
                snap.secret = kv.value.decode()
            elif kind == "config":
                snap.settings = ClusterSettings.model_validate_json(kv.value)
            elif kind == "hosts":
                snap.hosts[name] = HostRecord.model_validate_json(kv.value)
            elif kind == "alive":
                snap.alive.add(name)
            elif kind == "drain":
                snap.draining.add(name)
            elif kind == "vms":
                snap.placements[name] = VMPlacement.model_validate_json(kv.value)
                snap.revisions[name] = kv.mod_revision
            elif kind == "hostrev":
                snap.hostrev[name] = kv.mod_revision
        return snap

    async def placement(self, vm: str) -> VMPlacement | None:
        got = await self._call(lambda c: c.get(key("vms", vm)))
        return VMPlacement.model_validate_json(got.value) if got is not None else None

    # -- membership -----------------------------------------------------------------------------------------------
    async def ensure_secret(self) -> str:
        """The cluster's secret, made by the first host (a transaction: two first hosts agree on one)."""
        fresh = secrets.token_urlsafe(32)
        t = self.client.transactions
        await self._call(lambda c: c.transaction(compare=[t.version(key("secret")) == 0],
                                                 success=[t.put(key("secret"), fresh.encode())], failure=[]))
        got = await self._call(lambda c: c.get(key("secret")))
        return str(got.value.decode())

    async def secret(self) -> str:
        got = await self._call(lambda c: c.get(key("secret")))
        if got is None:
            raise InvalidInput(f"etcd at {self.endpoint} holds no Corral cluster: run `corral cluster init` first")
        return str(got.value.decode())

    async def set_settings(self, settings: ClusterSettings) -> None:
        await self._call(lambda c: c.put(key("config"), settings.model_dump_json().encode()))

    async def publish_host(self, rec: HostRecord) -> None:
        await self._call(lambda c: c.put(key("hosts", rec.name), rec.model_dump_json().encode()))

    async def lease(self, ttl: int) -> Any:
        return await self._call(lambda c: c.lease(ttl))

    async def mark_alive(self, host: str, lease: Any) -> None:
        await self._call(lambda c: c.put(key("alive", host), b"", lease=lease))

    async def refresh(self, lease: Any) -> int:
        """Renew the lease; its TTL left (0 or less: it expired, the host is seen down)."""
        resp = await self._call(lambda c: c.refresh_lease(lease.id))
        return int(resp.TTL)

    async def set_draining(self, host: str, draining: bool) -> None:
        if draining:
            await self._call(lambda c: c.put(key("drain", host), b"1"))
        else:
            await self._call(lambda c: c.delete(key("drain", host)))

    async def forget_host(self, host: str) -> None:
        for k in ("hosts", "alive", "drain", "hostrev"):
            await self._call(lambda c, k=k: c.delete(key(k, host)))  # type: ignore[misc]

    # -- placements -----------------------------------------------------------------------------------------------
    async def reserve(self, p: VMPlacement, seen_hostrev: int) -> bool:
        """Record ``p`` if no VM of that name is placed and nothing was placed on its host since ``seen_hostrev``
        (the mod revision of hostrev/<host> in the snapshot the scheduler read); False: try again on a new snapshot.
        """
        t = self.client.transactions
        ok, _ = await self._call(lambda c: c.transaction(
            compare=[t.version(key("vms", p.name)) == 0, t.mod(key("hostrev", p.host)) == seen_hostrev],
            success=[t.put(key("vms", p.name), p.model_dump_json().encode()),
                     t.put(key("hostrev", p.host), b"")],
            failure=[]))
        if not ok and await self.placement(p.name) is not None:
            raise Conflict(f"a VM named '{p.name}' already exists in the cluster: choose another name")
        return bool(ok)

    async def update_placement(self, p: VMPlacement) -> None:
        """The host that holds the VM publishes its state (and nothing else may change it)."""
        await self._call(lambda c: c.put(key("vms", p.name), p.model_dump_json().encode()))

    async def move(self, vm: str, from_host: str, to: VMPlacement) -> bool:
        """The commit point of a migration: the placement moves to the new host only if the old one still holds it."""
        t = self.client.transactions
        cur = await self._call(lambda c: c.get(key("vms", vm)))
        if cur is None or VMPlacement.model_validate_json(cur.value).host != from_host:
            return False
        ok, _ = await self._call(lambda c: c.transaction(
            compare=[t.mod(key("vms", vm)) == cur.mod_revision],
            success=[t.put(key("vms", vm), to.model_dump_json().encode()), t.put(key("hostrev", to.host), b"")],
            failure=[]))
        return bool(ok)

    async def claim(self, p: VMPlacement, seen_revision: int) -> bool:
        """Take over a dead host's VM: ``p`` (naming the new host) replaces its placement only if nobody changed it
        since ``seen_revision``; of several hosts trying, exactly one wins."""
        t = self.client.transactions
        ok, _ = await self._call(lambda c: c.transaction(
            compare=[t.mod(key("vms", p.name)) == seen_revision],
            success=[t.put(key("vms", p.name), p.model_dump_json().encode()), t.put(key("hostrev", p.host), b"")],
            failure=[]))
        return bool(ok)

    async def release(self, vm: str, host: str) -> None:
        """The VM is gone from ``host`` (deleted, or it failed to be made): its placement goes, if still that host's."""
        t = self.client.transactions
        cur = await self._call(lambda c: c.get(key("vms", vm)))
        if cur is None or VMPlacement.model_validate_json(cur.value).host != host:
            return
        await self._call(lambda c: c.transaction(compare=[t.mod(key("vms", vm)) == cur.mod_revision],
                                                 success=[t.delete(key("vms", vm))], failure=[]))


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()
