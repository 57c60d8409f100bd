"""Private NICs on QEMU's command line: a dgram pair to the switch, or a tap device on a bridge."""

from __future__ import annotations

from pathlib import Path

from corral.engine.cmdline import Attachments, HostConfig, Identity, NicAttachment, build_argv
from tests.unit.engine.test_cmdline import BOOT, PATHS

IDENT = Identity("0b5e2f4e-2b4a-4c55-9d59-1f0e5b0d7a11", "52:54:00:aa:bb:cc")


def test_switch_and_tap_nics() -> None:
    from corral.vm.spec import VMSpec

    nics = (
        NicAttachment("blue", "52:54:00:00:00:01", Path("/h/vms/web/net-blue.sock"), Path("/h/networks/blue/s.sock")),
        NicAttachment("lan", "52:54:00:00:00:02", Path("/x"), Path("/y"), tap="crt123"),
    )
    args = build_argv(VMSpec(name="web", ports=["8080:80"]), BOOT, PATHS, HostConfig("qemu", "tcg"), IDENT,
                      Attachments(nics=nics))
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80" in args
    assert ("dgram,id=net1,local.type=unix,local.path=/h/vms/web/net-blue.sock,remote.type=unix,"
            "remote.path=/h/networks/blue/s.sock") in args
    assert "virtio-net-pci,netdev=net1,mac=52:54:00:00:00:01" in args
    assert "tap,id=net2,ifname=crt123,script=no,downscript=no" in args
    assert "virtio-net-pci,netdev=net2,mac=52:54:00:00:00:02" in args
