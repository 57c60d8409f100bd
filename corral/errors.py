"""The root of Corral's exception tree.

Every package raises a subclass of :class:`CorralError`; the API maps them to HTTP statuses in one table
(``corral.api.errors``) and the CLI prints ``message`` on one line. The tree::

    CorralError
    ├── InvalidInput            bad spec, name, size (HTTP 422)
    ├── NotFound                no such VM or image (HTTP 404)
    ├── Conflict                duplicate name, image in use, wrong state (HTTP 409)
    │   └── StateError          operation not allowed in the VM's current state
    ├── CapacityError           the host cannot give what was asked (HTTP 409)
    ├── EngineError             QEMU / qemu-img / QMP / guest agent failed (HTTP 502)
    │   ├── GuestAgentError
    │   └── GuestAgentTimeout
    └── ImageError              building, verifying or storing an image failed (HTTP 500)
        └── VerificationError   a signature or checksum did not match
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with each character that is not printable (newline, tab, escape and the other control characters,
    line and paragraph separators) written as Python escapes it (``\\n``, ``\\x1b``): a message that quotes what a
    user sent (a name with a newline in it) stays one line, and shows what was sent."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class CorralError(Exception):
    """Base of every error Corral raises on purpose. ``message`` is one line, fit to print as is (made so: see
    :func:`one_line`)."""

    def __init__(self, message: str) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message


class InvalidInput(CorralError):
    """The request itself is wrong: fix the input and try again."""


class NotFound(CorralError):
    """The named VM, image or object does not exist."""


class Conflict(CorralError):
    """The request clashes with what exists: a duplicate name, an image still in use, a busy VM."""


class StateError(Conflict):
    """The operation is not allowed in the VM's current state."""

    def __init__(self, vm: str, operation: str, state: str, allowed: list[str]) -> None:
        super().__init__(
            f"cannot {operation} VM '{vm}' while it is {state} (allowed when: {', '.join(allowed) or 'never'})"
        )
        self.vm, self.operation, self.state, self.allowed = vm, operation, state, allowed


class CapacityError(CorralError):
    """The host cannot give the requested resources under its overcommit settings."""


class EngineError(CorralError):
    """QEMU, qemu-img, QMP or the guest agent failed."""


class GuestAgentError(EngineError):
    """The guest agent answered with an error, or its channel broke."""


class GuestAgentTimeout(GuestAgentError):
    """The guest agent did not answer in time."""


class ImageError(CorralError):
    """Building, verifying or storing a guest image failed."""


class VerificationError(ImageError):
    """A signature or checksum did not match what the archive published."""
