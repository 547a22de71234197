"""The sinks the contract suite runs on: every case of ``test_sink_contract.py`` runs once per entry of SINK_KINDS.

Fixtures: ``store`` (one test's private store of one kind; ``store.reopen(sink)``
closes a sink and opens the same store again) and ``sink`` (that store opened,
``ensure_ready(DIM)`` done, closed after the test).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pydantic import SecretStr

from actors.sinks.base import VectorSink, open_sink
from actors.sinks.mysql import MySQLSinkConfig
from actors.sinks.qdrant import QdrantSinkConfig
from tests.contract.points import DIM


@dataclass(frozen=True)
class SinkKind:
    name: str
    #: the settings of a store no other test uses: (request, tmp_path) -> config for open_sink
    config: Callable[[pytest.FixtureRequest, Path], Any]
    #: False for stores that keep nothing once closed (the reopen case is skipped for them)
    durable: bool = True


def _mysql_portable(request: pytest.FixtureRequest, tmp_path: Path) -> MySQLSinkConfig:
    from tests.support.mariadb import table_name

    server = request.getfixturevalue("mariadb")  # started only when a MySQL case runs
    return MySQLSinkConfig(
        dsn=server.dsn(), table=table_name("contract"), dialect="portable", password=SecretStr(server.password)
    )


# The registry of sink kinds.  Adding a sink (or a dialect/mode of one) to the
# contract suite = adding one entry here; every contract case then runs on it.
SINK_KINDS = [
    SinkKind("qdrant-embedded", lambda request, tmp: QdrantSinkConfig(path=str(tmp / "q"), collection="contract")),
    SinkKind("qdrant-memory", lambda request, tmp: QdrantSinkConfig(path=":memory:", collection="contract"), durable=False),
    SinkKind("mysql-portable", _mysql_portable),
]


class Store:
    """One test's store; opens sinks on it and closes them all at the end."""

    def __init__(self, kind: SinkKind, config: Any) -> None:
        self.kind = kind
        self.config = config
        self._open: list[VectorSink] = []

    def open(self) -> VectorSink:
        sink = open_sink(self.config)
        self._open.append(sink)
        sink.ensure_ready(DIM)
        return sink

    def reopen(self, sink: VectorSink) -> VectorSink:
        """Close ``sink`` (an embedded store admits one opener) and open the same store again."""
        sink.close()
        self._open.remove(sink)
        return self.open()

    def close(self) -> None:
        for sink in self._open:
            sink.close()
        self._open.clear()


@pytest.fixture(params=SINK_KINDS, ids=[k.name for k in SINK_KINDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind: SinkKind = request.param
    s = Store(kind, kind.config(request, tmp_path))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def sink(store: Store) -> VectorSink:
    return store.open()
