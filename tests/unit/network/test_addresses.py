"""Subnets, address allocation, the /etc/hosts block and forward parsing (pure functions)."""

from __future__ import annotations

import pytest

from corral.errors import Conflict, InvalidInput, NotFound
from corral.network import forwards
from corral.network.private import HOSTS_BEGIN, HOSTS_END, allocate_address, parse_subnet, pick_subnet, render_hosts
from corral.vm.spec import PortForward


def test_first_free_host_address() -> None:
    assert allocate_address("10.1.2.0/24", []) == "10.1.2.1"
    assert allocate_address("10.1.2.0/24", ["10.1.2.1", "10.1.2.3"]) == "10.1.2.2"
    with pytest.raises(Conflict):
        allocate_address("10.1.2.0/30", ["10.1.2.1", "10.1.2.2"])


def test_default_subnets_do_not_overlap() -> None:
    assert pick_subnet([]) == "10.77.0.0/24"
    assert pick_subnet(["10.77.0.0/24", "10.77.1.0/25"]) == "10.77.2.0/24"
    assert pick_subnet(["10.77.0.0/23"]) == "10.77.2.0/24"


@pytest.mark.parametrize("bad", ["10.1.2.3/24", "nonsense", "fd00::/64", "10.0.0.0/30"])
def test_bad_subnets(bad: str) -> None:
    with pytest.raises(InvalidInput):
        parse_subnet(bad)


def test_hosts_block_is_replaced_not_appended_twice() -> None:
    base = "127.0.0.1\tlocalhost\n"
    once = render_hosts(base, [("10.1.2.1", "a"), ("10.1.2.2", "b")])
    assert once == f"127.0.0.1\tlocalhost\n{HOSTS_BEGIN}\n10.1.2.1\ta\n10.1.2.2\tb\n{HOSTS_END}\n"
    twice = render_hosts(once, [("10.1.2.1", "a")])
    assert twice.count(HOSTS_BEGIN) == 1 and "10.1.2.2" not in twice and twice.startswith(base)


def test_hmp_commands_and_outputs() -> None:
    f = PortForward.parse("8080:80")
    assert forwards.add_command(f) == "hostfwd_add net0 tcp:127.0.0.1:8080-:80"
    assert forwards.add_command(f, "10.0.2.16") == "hostfwd_add net0 tcp:127.0.0.1:8080-10.0.2.16:80"
    assert forwards.remove_command(f) == "hostfwd_remove net0 tcp:127.0.0.1:8080"
    forwards.check_add_output(f, "")
    with pytest.raises(Conflict):
        forwards.check_add_output(f, "Could not set up host forwarding rule 'tcp:127.0.0.1:8080-:80'\r\n")
    assert forwards.check_remove_output(f, "host forwarding rule for tcp:127.0.0.1:8080 removed\r\n")
    assert not forwards.check_remove_output(f, "host forwarding rule for tcp:127.0.0.1:8080 not found\r\n")


def test_find_forward_by_port_or_spec() -> None:
    fs = [PortForward.parse("8080:80"), PortForward.parse("5353:53/udp")]
    assert forwards.find(fs, "8080") == fs[0]
    assert forwards.find(fs, "127.0.0.1:8080") == fs[0]
    assert forwards.find(fs, "8080:80") == fs[0]
    assert forwards.find(fs, "5353/udp") == fs[1]
    with pytest.raises(NotFound):
        forwards.find(fs, "5353")
    with pytest.raises(InvalidInput):
        forwards.find(fs, "x/y")
