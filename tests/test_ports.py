"""widedeep.ports hands out loopback ports that can be bound and never the same one twice."""

from __future__ import annotations

import socket
from contextlib import ExitStack

import pytest

from widedeep.ports import LOOPBACK, free_port, free_ports


def test_free_ports_are_distinct_and_can_all_be_bound_together():
    for _ in range(50):  # one by one, bind-to-0 handed out a just-released port again (CI, ray start)
        ports = free_ports(12)
        assert len(set(ports)) == 12
        with ExitStack() as held:
            for port in ports:
                held.enter_context(socket.socket()).bind((LOOPBACK, port))


def test_free_ports_skip_the_ports_already_given():
    given = set(free_ports(8))
    for _ in range(20):
        more = free_ports(8, taken=given)
        assert not given & set(more)
        given |= set(more)


def test_free_port_can_be_bound_on_loopback():
    with socket.socket() as s:
        s.bind((LOOPBACK, free_port()))


def test_free_ports_of_zero_is_empty_and_negative_is_refused():
    assert free_ports(0) == []
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        free_ports(-1)
