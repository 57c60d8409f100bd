"""Sandbox runs: a sample in a throwaway VM, and its report."""

from __future__ import annotations

import httpx

from corral.client.base import Core
from corral.sandbox.models import SandboxReport, SandboxRun

#: Seconds the daemon may need past the command's own timeout: the boot, the copy, stopping and reading the disk.
RUN_OVERHEAD = 900.0


class SandboxCalls(Core):
    """``POST /sandbox/runs``: one request for the whole run."""

    def sandbox_run(self, run: SandboxRun) -> SandboxReport:
        """Run a sample (:class:`SandboxRun`) and return its report; the request lasts the whole run."""
        timeout = httpx.Timeout(run.timeout + RUN_OVERHEAD, connect=5.0)
        r = self._req("POST", "/sandbox/runs", json=run.model_dump(mode="json"), timeout=timeout)
        return SandboxReport.model_validate(r.json())
