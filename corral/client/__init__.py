"""The Python client of Corral's API (also the SDK): httpx over the daemon's unix socket.

Errors come back as :class:`APIError` carrying the HTTP status, the error class name and the one-line message.
:func:`connect` starts the daemon when it is not running (as the CLI does).
"""

from __future__ import annotations

from corral.client.auth import AuthCalls
from corral.client.base import APIError, DaemonUnavailable, Download
from corral.client.cluster import ClusterCalls
from corral.client.daemon import DAEMON_PREFIX_ENV, daemon_prefix, daemon_running, start_daemon
from corral.client.files import FileCalls
from corral.client.host import HostCalls
from corral.client.sandbox import SandboxCalls
from corral.client.storage import StorageCalls
from corral.client.vms import VMCalls
from corral.settings import Settings, load_settings

__all__ = ["DAEMON_PREFIX_ENV", "APIError", "Client", "DaemonUnavailable", "Download", "connect", "daemon_prefix",
           "daemon_running", "start_daemon"]


class Client(VMCalls, FileCalls, HostCalls, StorageCalls, SandboxCalls, AuthCalls, ClusterCalls):
    """A client of corrald's API, one method a call: the groups of calls are in corral.client's modules."""


def connect(settings: Settings | None = None, autostart: bool = True) -> Client:
    """A client of this host's daemon, starting the daemon first if it is not running; or of the remote one that
    CORRAL_URL and CORRAL_TOKEN, or `corral login`, selected (corral.client.remote)."""
    from corral.client import remote as remotes

    chosen = remotes.selected()
    settings = settings or load_settings()
    if chosen is not None:
        return Client(settings.socket, remote=chosen)
    if autostart and not daemon_running(settings):
        start_daemon(settings)
    return Client(settings.socket)
