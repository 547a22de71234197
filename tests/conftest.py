"""Settings and servers every test folder shares."""

import os
from typing import Iterator

import pytest

import cluster  # noqa: F401 - before Ray is imported anywhere: keeps Ray on loopback (see cluster/__init__.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def mariadb() -> Iterator["MariaDBServer"]:  # noqa: F821 - imported lazily: unit tests need no MariaDB
    """One private MariaDB for the session (integration and contract tests)."""
    from tests.support.mariadb import private_mariadb

    with private_mariadb() as server:
        yield server
