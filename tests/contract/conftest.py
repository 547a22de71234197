"""The sinks the contract suite runs on: every case of ``test_sink_contract.py`` runs once per entry of SINK_KINDS.

Fixtures: ``store`` (one test's private store of one kind; ``store.reopen(sink)``
closes a sink and opens the same store again; ``store.open(limited=True)`` opens
a store of the same kind whose requests may not exceed ``points.LIMIT`` bytes, and
``store.requests(sink)`` measures the requests a sink sends) and ``sink`` (that
store opened, ``ensure_ready(DIM)`` done, closed after the test).

Request sizes are measured for real, per kind: Qdrant's requests are the REST
bodies qdrant-client would send for each call (its own JSON encoder), taken
at the sink's one request method while the store applies them; for the Edge
store, whose requests are calls into the library, they are the REST bodies of
the same operations (the points, vectors and payloads each call carries, as
qdrant-client would encode them for a server); MySQL's are
the bytes of each query on the wire (a relay between sink and server,
``wire.py``), on a private MariaDB started with ``max_allowed_packet = LIMIT``,
so that the server itself also refuses any larger statement.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import pytest
from pydantic import SecretStr

from actors.sinks.base import VectorSink, open_sink
from actors.sinks.mysql import MySQLSinkConfig
from actors.sinks.qdrant import QdrantSinkConfig
from tests.contract.points import DIM, LIMIT


@dataclass
class Requests:
    """What a sink sent while measured: (kind, bytes) per request, kind one of
    ``upsert``, ``update``, ``delete``, ``read`` (``other`` for anything else)."""

    sent: list[tuple[str, int]] = field(default_factory=list)

    def sizes(self, kind: str | None = None) -> list[int]:
        return [n for k, n in self.sent if kind is None or k == kind]


@dataclass(frozen=True)
class SinkKind:
    name: str
    #: the settings of a store no other test uses: (request, tmp_path) -> config for open_sink
    config: Callable[[pytest.FixtureRequest, Path], Any]
    #: the settings of another such store whose requests may not exceed LIMIT bytes
    limited: Callable[[pytest.FixtureRequest, Path], Any]
    #: measures the requests a sink of this kind sends: (request, sink) -> context manager of Requests
    requests: Callable[[pytest.FixtureRequest, VectorSink], ContextManager[Requests]]
    #: what a PointTooLarge message of this kind names as the limit's setting
    limit_key: str
    #: False for stores that keep nothing once closed (the reopen case is skipped for them)
    durable: bool = True
    #: builds the sink from its settings (open_sink, unless a kind needs another class)
    open: Callable[[Any], VectorSink] = open_sink


def _mysql_portable(request: pytest.FixtureRequest, tmp_path: Path) -> MySQLSinkConfig:
    from tests.support.mariadb import table_name

    server = request.getfixturevalue("mariadb")  # started only when a MySQL case runs
    return MySQLSinkConfig(
        dsn=server.dsn(), table=table_name("contract"), dialect="portable", password=SecretStr(server.password)
    )


def _mysql_limited(request: pytest.FixtureRequest, tmp_path: Path) -> MySQLSinkConfig:
    from tests.support.mariadb import table_name

    server = request.getfixturevalue("mariadb_limited")
    relay = request.getfixturevalue("mysql_relay")  # the sink talks to the server through it
    return MySQLSinkConfig(
        dsn=f"mysql://{server.user}@127.0.0.1:{relay.port}/{server.database}", table=table_name("limited"),
        dialect="portable", password=SecretStr(server.password),
    )


@pytest.fixture(scope="session")
def mariadb_limited() -> Iterator[Any]:
    """A private MariaDB of its own whose max_allowed_packet is LIMIT (the sink must read it)."""
    from tests.support.mariadb import MariaDBServer, MariaDBUnavailable

    server = MariaDBServer(extra_args=[f"--max-allowed-packet={LIMIT}"])
    try:
        server.start()
    except MariaDBUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


_QDRANT_KINDS = {"upsert": "upsert", "batch_update_points": "update", "delete": "delete", "retrieve": "read"}


def _qdrant_body(method: str, kwargs: dict[str, Any]) -> Any:
    """The REST body qdrant-client's remote client builds for this call (qdrant_remote.py)."""
    from qdrant_client import models

    if method == "upsert":
        return models.PointsList(points=kwargs["points"])
    if method == "delete":
        return kwargs["points_selector"]
    if method == "batch_update_points":
        return models.UpdateOperations(operations=kwargs["update_operations"])
    if method == "retrieve":
        return models.PointRequest(ids=kwargs["ids"], with_payload=kwargs.get("with_payload"),
                                   with_vector=kwargs.get("with_vectors"))
    raise AssertionError(f"unexpected Qdrant request {method}")


@contextlib.contextmanager
def _qdrant_requests(request: pytest.FixtureRequest, sink: VectorSink) -> Iterator[Requests]:
    """Each request's body as the REST client encodes it (``jsonable_encoder``: the bytes it sends)."""
    from qdrant_client.http.api.points_api import jsonable_encoder

    log = Requests()
    send = sink._request  # type: ignore[attr-defined]  # the sink's one way to the store

    def measured(method: str, collection: str, **kwargs: Any) -> Any:
        body = jsonable_encoder(_qdrant_body(method, kwargs))
        log.sent.append((_QDRANT_KINDS[method], len(body.encode("utf-8"))))
        return send(method, collection, **kwargs)

    sink._request = measured  # type: ignore[attr-defined]
    try:
        yield log
    finally:
        del sink._request  # type: ignore[attr-defined]


_EDGE_KINDS = {"upsert": "upsert", "update": "update", "delete": "delete", "retrieve": "read"}


def _edge_vector(vector: Any) -> Any:
    """An Edge point's vectors as qdrant-client's model of them (a map of named dense and sparse vectors)."""
    from qdrant_client import models

    if not isinstance(vector, dict):
        return list(vector)
    return {name: models.SparseVector(indices=list(v.indices), values=list(v.values)) if hasattr(v, "indices")
            else list(v) for name, v in vector.items()}


def _edge_body(kind: str, items: list[Any], options: dict[str, Any]) -> Any:
    """The REST body of the operation one Edge call carries (what a server would receive for it)."""
    from qdrant_client import models

    if kind in ("upsert", "update"):
        return models.PointsList(points=[
            models.PointStruct(id=str(p.id), vector=_edge_vector(p.vector), payload=p.payload) for p in items])
    if kind == "delete":
        return models.PointIdsList(points=[str(i) for i in items])
    if kind == "retrieve":
        return models.PointRequest(ids=[str(i) for i in items], with_payload=options.get("with_payload"),
                                   with_vector=bool(options.get("with_vector")))
    raise AssertionError(f"unexpected Edge request {kind}")


@contextlib.contextmanager
def _edge_requests(request: pytest.FixtureRequest, sink: VectorSink) -> Iterator[Requests]:
    """Each call into the Edge store, sized as the REST body of the same operation."""
    from qdrant_client.http.api.points_api import jsonable_encoder

    log = Requests()
    send = sink._request  # type: ignore[attr-defined]  # the sink's one way to the store

    def measured(kind: str, target: str, items: list[Any], **options: Any) -> Any:
        body = jsonable_encoder(_edge_body(kind, items, options))
        log.sent.append((_EDGE_KINDS[kind], len(body.encode("utf-8"))))
        return send(kind, target, items, **options)

    sink._request = measured  # type: ignore[attr-defined]
    try:
        yield log
    finally:
        del sink._request  # type: ignore[attr-defined]


_SQL_KINDS = {"insert": "upsert", "update": "update", "delete": "delete", "select": "read"}


@pytest.fixture(scope="session")
def mysql_relay(mariadb_limited: Any) -> Iterator[Any]:
    """A relay in front of ``mariadb_limited`` that records every query's size on the wire."""
    from tests.contract.wire import QueryRelay

    relay = QueryRelay("127.0.0.1", mariadb_limited.port)
    try:
        yield relay
    finally:
        relay.close()


@contextlib.contextmanager
def _mysql_requests(request: pytest.FixtureRequest, sink: VectorSink) -> Iterator[Requests]:
    """The statements the sink sent, as the bytes of each query on the wire (tests/contract/wire.py)."""
    relay = request.getfixturevalue("mysql_relay")
    log = Requests()
    relay.queries.clear()
    relay.recording = True
    try:
        yield log
    finally:
        relay.recording = False
        log.sent = [(_SQL_KINDS.get(verb, "other"), n) for verb, n in relay.queries]
        relay.queries.clear()


# The registry of sink kinds.  Adding a sink (or a dialect/mode of one) to the
# contract suite = adding one entry here; every contract case then runs on it.
def _client_sink(config: QdrantSinkConfig) -> VectorSink:
    """qdrant-client's in-memory local mode: the stand-in for a Qdrant server (no server binary here)."""
    from actors.sinks.qdrant import QdrantSink

    return QdrantSink(config)


def _edge(path: str, **kw: Any) -> QdrantSinkConfig:
    return QdrantSinkConfig(path=path, collection="contract", **kw)


SINK_KINDS = [
    SinkKind(
        "qdrant-edge",
        lambda request, tmp: _edge(str(tmp / "q")),
        limited=lambda request, tmp: _edge(str(tmp / "limited"), max_request_bytes=LIMIT),
        requests=_edge_requests,
        limit_key="sink.max_request_bytes",
    ),
    SinkKind(
        "qdrant-edge-memory",
        lambda request, tmp: _edge(":memory:"),
        limited=lambda request, tmp: _edge(":memory:", max_request_bytes=LIMIT),
        requests=_edge_requests,
        limit_key="sink.max_request_bytes",
        durable=False,
    ),
    SinkKind(
        # the sink of a sink.url (QdrantSink), on qdrant-client's in-memory local mode
        "qdrant-server-standin",
        lambda request, tmp: _edge(":memory:"),
        limited=lambda request, tmp: _edge(":memory:", max_request_bytes=LIMIT),
        requests=_qdrant_requests,
        limit_key="sink.max_request_bytes",
        durable=False,
        open=_client_sink,
    ),
    SinkKind("mysql-portable", _mysql_portable, limited=_mysql_limited, requests=_mysql_requests,
             limit_key="max_allowed_packet"),
]


class Store:
    """One test's store; opens sinks on it and closes them all at the end."""

    def __init__(self, kind: SinkKind, config: Any, request: pytest.FixtureRequest | None = None,
                 tmp_path: Path | None = None) -> None:
        self.kind = kind
        self.config = config
        self._request = request
        self._tmp_path = tmp_path
        self._limited: Any = None
        self._open: list[VectorSink] = []

    def open(self, limited: bool = False) -> VectorSink:
        """A sink on this store (``limited``: on this test's store of the same kind whose
        requests may not exceed LIMIT bytes), ``ensure_ready(DIM)`` done."""
        config = self.config
        if limited:
            if self._limited is None:
                assert self._request is not None and self._tmp_path is not None
                self._limited = self.kind.limited(self._request, self._tmp_path)
            config = self._limited
        sink = self.kind.open(config)
        self._open.append(sink)
        sink.ensure_ready(DIM)
        return sink

    def requests(self, sink: VectorSink) -> ContextManager[Requests]:
        """``with store.requests(sink) as sent: ...``: afterwards ``sent`` lists the requests sent."""
        assert self._request is not None
        return self.kind.requests(self._request, sink)

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
    s = Store(kind, kind.config(request, tmp_path), request, tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def sink(store: Store) -> VectorSink:
    return store.open()
