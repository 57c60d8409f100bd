import pytest

from corral import errors as e
from corral.api.errors import status_for


@pytest.mark.parametrize("exc,status", [
    (e.InvalidInput("x"), 422), (e.NotFound("x"), 404), (e.Conflict("x"), 409),
    (e.StateError("vm", "start", "running", ["stopped"]), 409), (e.CapacityError("x"), 409),
    (e.EngineError("x"), 502), (e.GuestAgentTimeout("x"), 502), (e.VerificationError("x"), 500),
    (e.CorralError("x"), 500),
])
def test_one_table_maps_errors(exc: e.CorralError, status: int) -> None:
    assert status_for(exc) == status


def test_state_error_is_one_line() -> None:
    msg = e.StateError("web", "start", "running", ["crashed", "stopped"]).message
    assert msg == "cannot start VM 'web' while it is running (allowed when: crashed, stopped)"
    assert "\n" not in msg
