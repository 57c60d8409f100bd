"""The tiny image's boot scripts (corral.images.tiny.FILES): what must be in place before its guest agent starts."""

from __future__ import annotations

from corral.images.tiny import FILES


def _mounts_tmp(script: str) -> bool:
    return any(line.startswith("mount ") and line.split()[-1] == "/tmp" for line in script.splitlines())


def test_tmp_is_mounted_before_the_agent_starts() -> None:
    """Corral's exec creates a command's output files in /tmp through the agent the moment it answers; a tmpfs
    mounted over /tmp after that hides them (the command writes into new ones, the host reads empty files: seen as
    an empty `hostname` after a reboot). So /tmp is mounted by rcS, which init runs to the end before it starts the
    agent, and by nothing that runs beside the agent."""
    inittab = FILES["etc/inittab"][1]
    assert inittab.index("::sysinit:/etc/init.d/rcS") < inittab.index("corral-qga")
    assert _mounts_tmp(FILES["etc/init.d/rcS"][1])
    assert not _mounts_tmp(FILES["etc/init.d/rc.background"][1])
