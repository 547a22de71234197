"""Ports on 127.0.0.1 for the private servers the demo, the tests and the benchmarks start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now.

    The kernel picks it; there is a small window before the caller's server
    binds it, which servers started here cover by retrying on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
