"""Bridged networks without touching the host: device names, the refusal when not root, the daemon prefix hook."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from corral.client import DAEMON_PREFIX_ENV, DaemonUnavailable, daemon_prefix
from corral.errors import InvalidInput
from corral.network import private
from corral.network.private import NetworkService, bridge_name_for, tap_name
from corral.settings import load_settings
from corral.store.db import Store


def test_device_names_fit_and_differ() -> None:
    assert bridge_name_for("lan") == "crl-lan"
    long_a, long_b = bridge_name_for("averylongname-1"), bridge_name_for("averylongname-2")
    assert len(long_a) <= 15 and len(long_b) <= 15 and long_a != long_b and long_a.startswith("crl-avery")
    vm = "0b5e2f4e-2b4a-4c55-9d59-1f0e5b0d7a11"
    tap = tap_name(vm, "lan")
    assert tap.startswith("crt0b5e2f") and len(tap) <= 15
    assert tap != tap_name(vm, "lan2") and tap == tap_name(vm, "lan")


def test_bridge_refused_when_not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One clear error, and nothing created: no `ip` run, no record, no directory."""
    settings = load_settings({"CORRAL_HOME": str(tmp_path / "home"), "CORRAL_CACHE": str(tmp_path / "cache")})
    settings.home.mkdir()
    store = Store(settings.database)
    ran: list[list[str]] = []

    async def fake_ip(args: list[str]) -> str:
        ran.append(args)
        return ""

    monkeypatch.setattr(private.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(private, "_ip", fake_ip)
    svc = NetworkService(settings, store)
    with pytest.raises(InvalidInput, match="bridged networks need root"):
        asyncio.run(svc.create("lan", bridge=True))
    assert ran == [] and store.list_networks() == [] and not svc.dir("lan").exists()
    store.close()


def test_daemon_prefix() -> None:
    assert daemon_prefix({}) == []
    prefix = daemon_prefix({DAEMON_PREFIX_ENV: f"{sys.executable} -c pass", "PATH": "/usr/bin"})
    assert prefix == [sys.executable, "-c", "pass"]
    with pytest.raises(DaemonUnavailable, match="not found"):
        daemon_prefix({DAEMON_PREFIX_ENV: "no-such-command-here x"})
