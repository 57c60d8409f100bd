"""Running a command in the guest to completion, for Corral's own provisioning steps."""

from __future__ import annotations

from corral.engine.guest_agent import ExecExit, ExecOutput, GuestAgent
from corral.errors import GuestAgentError


async def run(agent: GuestAgent, argv: list[str], *, stdin: bytes | None = None, timeout: float = 60.0,
              check: bool = True) -> tuple[int | None, bytes, bytes]:
    """(exit code, stdout, stderr); with ``check``, a non-zero exit raises GuestAgentError naming the command."""
    out, err, code = bytearray(), bytearray(), None
    async for item in agent.exec_stream(argv, stdin=stdin, timeout=timeout):
        if isinstance(item, ExecOutput):
            (out if item.stream == "stdout" else err).extend(item.data)
        elif isinstance(item, ExecExit):
            code = item.exit_code
            if item.timed_out:
                raise GuestAgentError(f"guest command {argv[0]!r} timed out after {timeout:.0f}s")
    if check and code != 0:
        detail = err.decode(errors="replace").strip()
        raise GuestAgentError(f"guest command {' '.join(argv)!r} failed ({code}): {detail}")
    return code, bytes(out), bytes(err)
