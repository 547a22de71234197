"""Private throwaway MariaDB server for tests (re-exported from ``benchmarks.mariadb_server``).

The launcher lives in ``benchmarks/`` so the benchmark and the tests share one
implementation; see :class:`MariaDBServer` for what it does.
"""

from benchmarks.mariadb_server import INSTALL_HINT, MariaDBServer, MariaDBUnavailable, find_binary

__all__ = ["INSTALL_HINT", "MariaDBServer", "MariaDBUnavailable", "find_binary"]
