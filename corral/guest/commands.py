"""Running a command in the guest to completion, for Corral's own provisioning steps."""

from __future__ import annotations

from corral.engine.guest_agent import GuestAgent
from corral.errors import GuestAgentError, GuestAgentTimeout


async def run(agent: GuestAgent, argv: list[str], *, stdin: bytes | None = None, timeout: float = 60.0,
              check: bool = True) -> tuple[int | None, bytes, bytes]:
    """(exit code, stdout, stderr); with ``check``, a non-zero exit raises GuestAgentError naming the command.
    The output is captured by the agent (small outputs: these are Corral's own short commands)."""
    try:
        code, out, err = await agent.exec_captured(argv, stdin=stdin, timeout=timeout)
    except GuestAgentTimeout as exc:
        raise GuestAgentError(f"guest command {argv[0]!r} timed out after {timeout:.0f}s") from exc
    if check and code != 0:
        detail = err.decode(errors="replace").strip()
        raise GuestAgentError(f"guest command {' '.join(argv)!r} failed ({code}): {detail}")
    return code, out, err
