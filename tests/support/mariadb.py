"""The tests' private MariaDB: one throwaway server per test session, a new table per test.

The launcher itself (:class:`cluster.mariadb_server.MariaDBServer`) sits beside
the demo's PostgreSQL launcher, since ``embedcluster bench writer`` starts one
too; this module is what tests use on top of it.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator

import pytest

from cluster.mariadb_server import INSTALL_HINT, MariaDBServer, MariaDBUnavailable, find_binary

__all__ = ["INSTALL_HINT", "MariaDBServer", "MariaDBUnavailable", "find_binary", "private_mariadb", "table_name"]

_tables = itertools.count()


@contextlib.contextmanager
def private_mariadb() -> Iterator[MariaDBServer]:
    """A started private MariaDB on 127.0.0.1, stopped and removed afterwards.

    Missing server binaries fail the test with the install command: the MySQL
    sink is part of the product, so its tests never silently skip.
    """
    server = MariaDBServer()
    try:
        server.start()
    except MariaDBUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def table_name(prefix: str = "t") -> str:
    """A table name no other test of this session uses (the server is shared)."""
    return f"{prefix}_{next(_tables)}"
