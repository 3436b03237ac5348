"""Free TCP ports on the loopback address, for the processes this repo starts on one machine.

Why a set at once: a port read back from ``bind(("127.0.0.1", 0))`` is released when its socket
closes, and the kernel may hand the very same port to the next ``bind`` a moment later. Picking
the ports of one ``ray start`` one call at a time therefore gave two of its components the same
port once (``ray start`` refused: "metrics_export is trying to use a port number ... that is used
by other components"). ``free_ports`` keeps every socket bound until all ``n`` are chosen, so the
ports it returns differ from each other and from ``taken`` (the ports a caller has already handed
out, for instance to the other nodes of ``widedeep.dev_cluster``).

A port is free when it is chosen; another process may still take it before the caller's server
binds it. Nothing on one machine can close that gap short of passing the bound socket itself.
"""

from __future__ import annotations

import socket
from collections.abc import Collection
from contextlib import ExitStack

LOOPBACK = "127.0.0.1"


def free_ports(n: int, taken: Collection[int] = ()) -> list[int]:
    """``n`` distinct ports on ``LOOPBACK`` that nothing listens on now and that are not in ``taken``."""
    if n < 0:
        raise ValueError(f"free_ports: n must be >= 0, got {n}")
    chosen: list[int] = []
    with ExitStack() as held:
        for _ in range(n + len(taken) + 64):  # each bind gets a port no held socket has
            if len(chosen) == n:
                break
            s = held.enter_context(socket.socket())
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
            if port not in taken:
                chosen.append(port)
    if len(chosen) < n:
        raise RuntimeError(f"free_ports: found {len(chosen)} free ports on {LOOPBACK}, needed {n}")
    return chosen


def free_port() -> int:
    """One port on ``LOOPBACK`` that nothing listens on now."""
    return free_ports(1)[0]
