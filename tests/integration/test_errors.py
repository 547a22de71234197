"""Bad configuration and bad sources: one clear line, non-zero exit, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from cluster.pgserver import LocalPostgres
from tests.support.harness import REPO, free_port, private_postgres, write_config

pytestmark = pytest.mark.integration


def run_cli(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "run", "--config", str(config)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error: ")
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert "Traceback" not in result.stdout + result.stderr
    return line


@pytest.fixture(scope="module")
def replica_level_pg() -> Iterator[LocalPostgres]:
    with private_postgres(wal_level="replica") as server:
        yield server


def _sink(tmp_path: Path) -> dict[str, str]:
    return {"kind": "qdrant", "path": str(tmp_path / "q")}


def test_no_such_table(books: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", books, free_port(), _sink(tmp_path),
                       tables=[{"name": "public.nope", "text": "{description}", "payload": []}])
    assert_one_line_error(run_cli(cfg), "public.nope", "does not exist", "tables[0].name")


def test_table_without_primary_key(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (body text)")
    cfg = write_config(tmp_path / "c.toml", dsn, free_port(), _sink(tmp_path),
                       tables=[{"name": "notes", "text": "{body}", "payload": ["body"]}])
    assert_one_line_error(run_cli(cfg), "public.notes", "no primary key", "ADD PRIMARY KEY")


def test_unknown_column_in_text(books: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", books, free_port(), _sink(tmp_path),
                       tables=[{"name": "public.books", "text": "{name}: {summary}", "payload": ["name"]}])
    assert_one_line_error(run_cli(cfg), "tables[0].text", "'summary'", "public.books")


def test_unknown_column_in_payload(books: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", books, free_port(), _sink(tmp_path),
                       tables=[{"name": "public.books", "text": "{description}", "payload": ["name", "isbn"]}])
    assert_one_line_error(run_cli(cfg), "tables[0].payload", "'isbn'")


def test_unreachable_database(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/app"
    cfg = write_config(tmp_path / "c.toml", dsn, free_port(), _sink(tmp_path))
    line = assert_one_line_error(run_cli(cfg), "cannot connect to PostgreSQL", "127.0.0.1", "source.dsn")
    assert "hunter2" not in line  # the password never shows


def test_wal_level_not_logical(replica_level_pg: LocalPostgres, tmp_path: Path) -> None:
    dsn = replica_level_pg.create_database("app")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE books (id int primary key, description text)")
    cfg = write_config(tmp_path / "c.toml", dsn, free_port(), _sink(tmp_path),
                       tables=[{"name": "books", "text": "{description}", "payload": []}])
    assert_one_line_error(run_cli(cfg), "wal_level is 'replica'", "wal_level = logical", "restart")


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[tables]]\nname = "books"\n')
    assert_one_line_error(run_cli(cfg), "source")
    cfg.write_text('[source]\ndsn = "postgresql://x@127.0.0.1/db"\n[[tables]]\nname = "books"\n[embedding]\nactor = 2\n')
    assert_one_line_error(run_cli(cfg), "embedding.actor")
    assert_one_line_error(run_cli(tmp_path / "missing.toml"), "not found")


def test_sink_wrong_dimension(books: str, tmp_path: Path) -> None:
    from actors.sinks.base import open_sink
    from actors.sinks.qdrant import QdrantSinkConfig

    store = open_sink(QdrantSinkConfig(path=str(tmp_path / "q")))  # the embedded store, 8-d
    store.ensure_ready(8)
    store.close()
    cfg = write_config(tmp_path / "c.toml", books, free_port(), _sink(tmp_path))
    assert_one_line_error(run_cli(cfg), "embedcluster", "8-dimensional", "384")


def test_mysql_sink_bad_credentials(books: str, mariadb, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = write_config(tmp_path / "c.toml", books, free_port(),
                       {"kind": "mysql", "dsn": mariadb.dsn(), "table": "vectors_bad_password"})
    result = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "run", "--config", str(cfg)],
        capture_output=True, text=True, cwd=REPO, timeout=180,
        env={**__import__("os").environ, "EMBEDCLUSTER_SINK_PASSWORD": "not-the-password"},
    )
    line = assert_one_line_error(result, "rejected user 'embedcluster'", "EMBEDCLUSTER_SINK_PASSWORD")
    assert "not-the-password" not in result.stdout + result.stderr
    assert "password" in line.lower() or "access denied" in line.lower()
