"""Which channel `corral cp` takes: the virtio-serial port when the daemon can plug one, else SSH, else the agent."""

from __future__ import annotations

from typing import Any

import pytest

from corral.api.models import CopyChannel, SSHInfo
from corral.cli.copy_channels import AgentChannel, SSHChannel, VirtioChannel
from corral.cli.cp import Via, choose_channel
from corral.client import APIError
from corral.errors import Conflict


class FakeClient:
    def __init__(self, virtio: bool, ssh: bool = True) -> None:
        self.virtio, self.ssh = virtio, ssh

    def virtio_status(self, name: str) -> CopyChannel:
        return CopyChannel(available=self.virtio, reason="" if self.virtio else f"VM '{name}' is stopped")

    def ssh_info(self, name: str, **_: Any) -> SSHInfo:
        if not self.ssh:
            raise APIError(409, "conflict", "no SSH host key")
        return SSHInfo(host="127.0.0.1", port=2222, user="root", identity_file="/k", known_hosts="/kh")


@pytest.mark.parametrize(("virtio", "ssh", "expected"), [
    (True, True, VirtioChannel), (False, True, SSHChannel), (False, False, AgentChannel),
])
def test_auto_takes_the_first_there(virtio: bool, ssh: bool, expected: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _: "/usr/bin/ssh")
    channel, _ = choose_channel(FakeClient(virtio, ssh), "vm", Via.auto)  # type: ignore[arg-type]
    assert type(channel) is expected


def test_virtio_insisted_on_but_not_there_is_one_line() -> None:
    with pytest.raises(Conflict, match="cannot copy over a virtio-serial port: VM 'vm' is stopped"):
        choose_channel(FakeClient(False), "vm", Via.virtio)  # type: ignore[arg-type]
    channel, why = choose_channel(FakeClient(True), "vm", Via.virtio)  # type: ignore[arg-type]
    assert isinstance(channel, VirtioChannel) and why == "--via virtio"
    assert isinstance(choose_channel(FakeClient(True), "vm", Via.agent)[0], AgentChannel)  # type: ignore[arg-type]


def test_an_upload_asks_for_the_port_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """No status round trip for an upload (the daemon refuses the port itself); once refused, SSH or the agent."""
    monkeypatch.setattr("shutil.which", lambda _: "/usr/bin/ssh")
    client = FakeClient(False)
    channel, _ = choose_channel(client, "vm", Via.auto, upload=True)  # type: ignore[arg-type]
    assert isinstance(channel, VirtioChannel)
    channel, _ = choose_channel(client, "vm", Via.auto, upload=True, no_virtio="stopped")  # type: ignore[arg-type]
    assert isinstance(channel, SSHChannel)
