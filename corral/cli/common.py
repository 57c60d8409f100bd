"""What every verb shares: the client, one-line errors with meaningful exit codes, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from corral.client import APIError, Client, DaemonUnavailable, connect
from corral.errors import CorralError

out = Console()
err = Console(stderr=True)

#: Exit codes, documented in docs/reference/cli.md.
EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_CAPACITY = 5
EXIT_ENGINE = 6
EXIT_DAEMON = 7

_BY_ERROR = {
    "InvalidInput": EXIT_INVALID, "NotFound": EXIT_NOT_FOUND, "Conflict": EXIT_CONFLICT,
    "StateError": EXIT_CONFLICT, "CapacityError": EXIT_CAPACITY, "EngineError": EXIT_ENGINE,
    "MonitorError": EXIT_ENGINE, "MigrationError": EXIT_ENGINE, "GuestAgentError": EXIT_ENGINE,
    "GuestAgentTimeout": EXIT_ENGINE, "NoHostFits": EXIT_CAPACITY, "MigrationFailed": EXIT_ENGINE,
}


def exit_code_for(error: str, default: int = EXIT_ERROR) -> int:
    """The exit code for an error class name (as the API reports it)."""
    return _BY_ERROR.get(error, default)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def api() -> Iterator[Client]:
    """A connected client; any Corral error becomes one line on stderr and its exit code."""
    try:
        with connect() as client:
            yield client
    except APIError as exc:
        fail(exc.message, _BY_ERROR.get(exc.error, EXIT_ERROR))
    except DaemonUnavailable as exc:
        fail(exc.message, EXIT_DAEMON)
    except CorralError as exc:
        fail(exc.message, EXIT_ERROR)


T = TypeVar("T")


def print_json(data: BaseModel | list[Any] | dict[str, Any]) -> None:
    if isinstance(data, BaseModel):
        text = data.model_dump_json(indent=2)
    else:
        text = json.dumps([d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
                          if isinstance(data, list) else data, indent=2)
    sys.stdout.write(text + "\n")


def human_duration(seconds: float | None) -> str:
    """2d3h, 4h12m, 5m07s, 42s."""
    if seconds is None:
        return "-"
    s = int(seconds)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d{h}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s % 60:02d}s"
    return f"{s}s"


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for p in pairs:
        if "=" not in p or p.startswith("="):
            fail(f"--env {p!r} is not KEY=VALUE", EXIT_INVALID)
        k, v = p.split("=", 1)
        env[k] = v
    return env


Callback = Callable[..., Any]
