"""Port forwards on a running VM, through QEMU's HMP ``hostfwd_add`` / ``hostfwd_remove`` on the NAT netdev.

QMP has no command for these, so they go through QMP's ``human-monitor-command``. HMP reports failures as text
in the command's output, not as QMP errors: QEMU 7.2 prints nothing when ``hostfwd_add`` succeeds, and
``host forwarding rule for ... removed`` / ``... not found`` for ``hostfwd_remove``. Anything else is an error.
"""

from __future__ import annotations

from corral.engine.monitor import Monitor
from corral.errors import Conflict, EngineError, InvalidInput, NotFound
from corral.vm.spec import PortForward

NETDEV = "net0"


def add_command(f: PortForward, guest_addr: str = "") -> str:
    """``guest_addr`` empty: the NAT's first guest address (10.0.2.15)."""
    return f"hostfwd_add {NETDEV} {f.proto}:{f.host_addr}:{f.host_port}-{guest_addr}:{f.guest_port}"


def remove_command(f: PortForward) -> str:
    return f"hostfwd_remove {NETDEV} {f.proto}:{f.host_addr}:{f.host_port}"


def check_add_output(f: PortForward, output: str) -> None:
    text = " ".join(output.split())
    if not text:
        return
    if "Could not set up host forwarding rule" in text:
        raise Conflict(f"host port {f.host_addr}:{f.host_port}/{f.proto} could not be bound by QEMU ({text}): "
                       "choose another host port")
    raise EngineError(f"QEMU refused the forward {f}: {text}")


def check_remove_output(f: PortForward, output: str) -> bool:
    """True if QEMU removed the rule, False if it had none; EngineError on anything else."""
    text = " ".join(output.split())
    if text.endswith("removed"):
        return True
    if text.endswith("not found"):
        return False
    raise EngineError(f"QEMU could not remove the forward {f}: {text or 'no answer'}")


async def add(monitor: Monitor, f: PortForward, guest_addr: str = "") -> None:
    out = await monitor.execute("human-monitor-command", {"command-line": add_command(f, guest_addr)})
    check_add_output(f, str(out or ""))


async def remove(monitor: Monitor, f: PortForward) -> bool:
    out = await monitor.execute("human-monitor-command", {"command-line": remove_command(f)})
    return check_remove_output(f, str(out or ""))


def find(forwards: list[PortForward], text: str) -> PortForward:
    """The forward that ``text`` names: a full spec ('8080:80', '127.0.0.1:8080:80/udp') or a host port
    ('8080', '8080/udp', '127.0.0.1:8080')."""
    text = text.strip()
    try:
        want = PortForward.parse(text)
        matches = [f for f in forwards if f.key() == want.key()]
    except ValueError:
        proto = "tcp"
        body = text
        if "/" in text:
            body, proto = text.rsplit("/", 1)
        addr, _, port = body.rpartition(":")
        if not port.isdigit() or proto not in ("tcp", "udp"):
            raise InvalidInput(f"{text!r} names no forward: use HOST_PORT[/udp] or the forward's "
                               "[ADDR:]HOST:GUEST[/udp]") from None
        matches = [f for f in forwards
                   if f.host_port == int(port) and f.proto == proto and (not addr or f.host_addr == addr)]
    if not matches:
        have = ", ".join(str(f) for f in forwards) or "none"
        raise NotFound(f"no forward matches {text!r} (forwards: {have})")
    return matches[0]
