"""Expiry on real VMs, with a tiny TTL and the daemon checking every 0.5 s (CORRAL_EXPIRY_INTERVAL): stop,
suspend (and resume after extend) and delete, each warned (`expiring`) then acted on (`expired`); extend prevents
expiry; a project's default TTL applies to a VM launched without one.

These run beside other VM tests on 2 cores: a launch alone can take several seconds, and a boot half a minute.
No test assumes a TTL outlives the commands it runs, except where it says so and checks it; the waits for an
action are generous, since they only matter when the product fails."""

from __future__ import annotations

import time

import pytest

from tests.conftest import CorralEnv, show, until

pytestmark = pytest.mark.vm


@pytest.fixture
def fast(corral_home: CorralEnv) -> CorralEnv:
    """A daemon checking expiry every 0.5 s, warning 40% of the lifetime before (at most an hour)."""
    corral_home.env["CORRAL_EXPIRY_INTERVAL"] = "0.5"
    corral_home.env["CORRAL_EXPIRY_WARNING_FRACTION"] = "0.4"
    corral_home.env["COLUMNS"] = "200"  # `corral ls` in full
    corral_home.start_daemon()
    corral_home.client.build_image("tiny")
    return corral_home


def expiry_events(c: CorralEnv, name: str) -> list[tuple[str, str, dict]]:  # type: ignore[type-arg]
    return [(e.type, e.result, e.data) for e in c.client.events(vm=name) if e.type in ("expiring", "expired")]


def launch(c: CorralEnv, name: str, *args: str) -> None:
    r = c.cli("launch", name, "--no-wait", *args)
    assert r.returncode == 0, r.stderr


#: How long an expiry action may take on a busy host: a stop waits up to 30 s for the guest's ACPI power-off.
ACT_WITHIN = 180


def check_events(c: CorralEnv, name: str, action: str) -> None:
    """Warned once, then expired once with the action done (an attempt that failed first, retried, is allowed)."""
    evs = expiry_events(c, name)
    assert [t for t, _, _ in evs[:1]] == ["expiring"] and [t for t, _, _ in evs[1:]] == ["expired"] * (len(evs) - 1)
    done = [e for e in evs[1:] if e[1] == "ok"]
    assert len(done) == 1 and done[0] == evs[-1] and done[0][2]["action"] == action, evs
    assert len({e[2]["expires_at"] for e in evs}) == 1, evs


def test_stop_at_expiry(fast: CorralEnv) -> None:
    t0 = time.monotonic()
    launch(fast, "exp-stop", "--ttl", "8s")
    v = show(fast, "exp-stop")
    assert v["spec"]["on_expiry"] == "stop" and v["spec"]["expires_at"]
    ls = fast.cli("ls")
    assert "EXPIRES" in ls.stdout
    until(lambda: show(fast, "exp-stop")["state"] == "stopped", ACT_WITHIN, "the VM stopped at expiry")
    print(f"\nstop: stopped {time.monotonic() - t0:.1f}s after launch (ttl 8 s)")
    assert time.monotonic() - t0 >= 7
    check_events(fast, "exp-stop", "stop")
    assert "exp-stop" not in fast.qemu_pids()
    assert "expired" in fast.cli("ls").stdout
    r = fast.cli("start", "exp-stop", "--no-wait")
    assert r.returncode != 0 and "extend" in r.stderr, "an expired VM does not start again"


def test_suspend_at_expiry_then_extend_and_resume(fast: CorralEnv) -> None:
    launch(fast, "exp-sus", "--ttl", "5s", "--on-expiry", "suspend")
    until(lambda: show(fast, "exp-sus")["state"] == "suspended", ACT_WITHIN, "the VM suspended at expiry")
    check_events(fast, "exp-sus", "suspend")
    assert (fast.settings.vms_dir / "exp-sus" / "state.bin").is_file()
    assert fast.cli("resume", "exp-sus").returncode != 0, "expired: resume refused until extended"
    r = fast.cli("extend", "exp-sus", "1h")
    assert r.returncode == 0, r.stderr
    assert [e.type for e in fast.client.events(vm="exp-sus")][-1] == "extend"
    r = fast.cli("resume", "exp-sus")
    assert r.returncode == 0, r.stderr
    assert show(fast, "exp-sus")["state"] == "running"
    assert fast.cli("exec", "exp-sus", "--", "true").returncode == 0


def test_delete_at_expiry(fast: CorralEnv) -> None:
    launch(fast, "exp-del", "--ttl", "4s", "--on-expiry", "delete")
    until(lambda: fast.cli("show", "exp-del").returncode != 0, ACT_WITHIN, "the VM deleted at expiry")
    check_events(fast, "exp-del", "delete")
    left = fast.settings.vms_dir / "exp-del"
    assert not left.exists(), f"the deleted VM's folder is back, holding {sorted(p.name for p in left.iterdir())}"
    assert not [p.name for p in fast.settings.vms_dir.iterdir() if p.name.startswith(".")], "nothing left aside"
    assert "exp-del" not in fast.qemu_pids()


def test_extend_prevents_expiry(fast: CorralEnv) -> None:
    ttl = 20.0  # long enough for `launch` and `extend` on a busy host (checked below), short enough to wait out
    t0 = time.monotonic()
    launch(fast, "exp-ext", "--ttl", f"{ttl:g}s")
    r = fast.cli("extend", "exp-ext", "1h")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < ttl, "the host was too slow: launch and extend took longer than the TTL"
    time.sleep(max(0.0, t0 + ttl + 3 - time.monotonic()))  # past the first expiry, and a few checks after it
    v = show(fast, "exp-ext")
    assert v["state"] in ("starting", "running") and v["expires_in"] > 3000, v
    assert not any(t == "expired" for t, _, _ in expiry_events(fast, "exp-ext"))
    r = fast.cli("extend", "exp-ext", "--to", "2099-01-01T00:00:00Z")
    assert r.returncode == 0, r.stderr
    assert show(fast, "exp-ext")["spec"]["expires_at"].startswith("2099-01-01T00:00:00")


def test_project_default_ttl(fast: CorralEnv) -> None:
    r = fast.cli("project", "set", "short", "--default-ttl", "4s", "--on-expiry", "stop")
    assert r.returncode == 0, r.stderr
    assert "short" in fast.cli("project", "ls").stdout
    launch(fast, "exp-proj", "--project", "short")
    launch(fast, "exp-own", "--project", "short", "--ttl", "1h")  # its own TTL wins
    assert show(fast, "exp-own")["expires_in"] > 3000
    until(lambda: show(fast, "exp-proj")["state"] == "stopped", ACT_WITHIN,
          "the project's default TTL to stop the VM")
    check_events(fast, "exp-proj", "stop")
    assert show(fast, "exp-own")["state"] in ("starting", "running")
