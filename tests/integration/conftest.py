"""Real servers for the integration tests: a private PostgreSQL (and MariaDB for the MySQL sink)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from cluster.demo import BATCH_1, BOOKS_DDL
from cluster.pgserver import LocalPostgres
from tests.support.harness import private_postgres

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture()
def dsn(pg: LocalPostgres) -> str:
    """A fresh database for one test."""
    return pg.create_database(f"t{next(_counter)}")


@pytest.fixture()
def books(dsn: str) -> str:
    """A database holding the books table with the demo's first batch."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(BOOKS_DDL)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO books (name, description, author, year) VALUES (%s, %s, %s, %s)", BATCH_1)
    return dsn


@pytest.fixture(params=["qdrant", "mysql"])
def sink_settings(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Sink section for the config, one per sink kind (the same scenarios run on both)."""
    if request.param == "qdrant":
        return {"kind": "qdrant", "collection": "books", "path": str(tmp_path / "qdrant")}
    server = request.getfixturevalue("mariadb")
    # the password travels the way users pass it: an environment variable
    monkeypatch.setenv("EMBEDCLUSTER_SINK_PASSWORD", server.password)
    return {"kind": "mysql", "dsn": server.dsn(), "table": f"books_{next(_counter)}", "dialect": "auto"}
