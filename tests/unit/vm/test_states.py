import pytest

from corral.errors import StateError
from corral.vm.states import ALLOWED_FROM, LIVE, TRANSITIONS, VMState, check_operation, check_transition


def test_start_only_from_stopped_or_crashed() -> None:
    check_operation("a", "start", VMState.STOPPED)
    check_operation("a", "start", VMState.CRASHED)
    with pytest.raises(StateError, match="cannot start VM 'a' while it is running"):
        check_operation("a", "start", VMState.RUNNING)


def test_delete_refuses_live_states() -> None:
    for state in LIVE:
        with pytest.raises(StateError):
            check_operation("a", "delete", state)


def test_unknown_is_never_treated_as_absent() -> None:
    # An unknown VM may still run: it can be killed, never started again or deleted.
    assert VMState.UNKNOWN in LIVE
    assert VMState.UNKNOWN not in ALLOWED_FROM["start"]
    assert VMState.UNKNOWN not in ALLOWED_FROM["delete"]
    assert (VMState.UNKNOWN, VMState.STARTING) not in TRANSITIONS


def test_undeclared_transition_is_a_bug() -> None:
    check_transition(VMState.RUNNING, VMState.PAUSED)
    check_transition(VMState.RUNNING, VMState.RUNNING)
    with pytest.raises(ValueError, match="undeclared"):
        check_transition(VMState.STOPPED, VMState.RUNNING)


def test_every_operation_target_is_reachable() -> None:
    # Each state an operation may start from appears in some declared transition.
    states = {s for pair in TRANSITIONS for s in pair}
    for allowed in ALLOWED_FROM.values():
        assert allowed <= states


def test_suspend_and_resume_paths() -> None:
    check_operation("a", "suspend", VMState.RUNNING)
    check_operation("a", "suspend", VMState.PAUSED)
    for op in ("resume", "start", "delete", "stop"):  # start/resume load the state; stop discards it (--force)
        check_operation("a", op, VMState.SUSPENDED)
    for op in ("exec", "kill", "pause", "restart", "suspend", "console"):
        with pytest.raises(StateError, match=f"cannot {op} VM 'a' while it is suspended"):
            check_operation("a", op, VMState.SUSPENDED)
    for old, new in [(VMState.RUNNING, VMState.SUSPENDING), (VMState.PAUSED, VMState.SUSPENDING),
                     (VMState.SUSPENDING, VMState.SUSPENDED), (VMState.SUSPENDING, VMState.RUNNING),
                     (VMState.SUSPENDED, VMState.STARTING), (VMState.STARTING, VMState.SUSPENDED),
                     (VMState.SUSPENDED, VMState.STOPPED)]:
        check_transition(old, new)
    with pytest.raises(ValueError, match="undeclared"):
        check_transition(VMState.SUSPENDED, VMState.RUNNING)  # only through a QEMU that loads the state
    with pytest.raises(ValueError, match="undeclared"):
        check_transition(VMState.RUNNING, VMState.SUSPENDED)  # only once the state is saved


def test_suspended_is_a_resting_state() -> None:
    # No QEMU process while suspended: not live (no memory counted, no re-attach); suspending is live.
    assert VMState.SUSPENDED not in LIVE
    assert VMState.SUSPENDING in LIVE
    assert VMState.SUSPENDING not in ALLOWED_FROM["delete"]
