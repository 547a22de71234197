"""``embedcluster verify``: :class:`actors.verify.Verifier` on the configured source and store.

The comparison and the repair are ``actors/verify.py``; this module reaches the
store and prints.  :func:`open_store` gives the verifier one
:class:`~actors.verify.PointStore` either way:

* directly: a shared sink (MySQL, a Qdrant server), or an embedded Qdrant store
  that no process holds;
* through the running pipeline's writer actor, when that actor holds the embedded
  store (opening it fails with "is open in another process").  The writer left
  ``embedcluster-owner.json`` beside the store (``actors.remote.announce_owner``):
  its local Ray's GCS address on 127.0.0.1, namespace and name.  verify joins that
  Ray (the same machine and user) and calls the writer's query methods; repair
  writes go to its default group, between two batches.  The address is taken from
  the store rather than from ``ray.init(address="auto")``, which on a machine with
  several local Ray instances joins any one of them.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import psycopg

from actors.logs import error_line
from actors.sinks.base import SinkError, StoredPoint, VectorPoint, open_sink
from actors.source_config import qualified_name, split_qualified
from actors.source_schema import SourceError, inspect_source
from actors.verify import CLASSES, OWNER_FILE, PgRowSource, PointStore, Report, Verifier, VerifyError
from cluster.config import Config

#: how long one call to the writer actor may take
CALL_TIMEOUT_S = 120.0
#: "the store is locked": QdrantSink's message for a store another process holds
_LOCKED = "is open in another process"

__all__ = ["VerifyError", "forget", "format_report", "open_store", "verify"]


class WriterStore:
    """:class:`~actors.verify.PointStore` through the running pipeline's writer actor."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(getattr(self.writer, method).remote(*args), timeout=CALL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the actor died, timed out or its sink failed
            raise VerifyError(f"the running pipeline's writer did not answer {method}: {error_line(exc)}") from None

    def get_points(self, point_ids: Sequence[str]) -> dict[str, StoredPoint]:
        return self._call("get_points", list(point_ids))

    def points_page(self, table: str | None, cursor: str | None,
                    limit: int | None = None) -> tuple[list[StoredPoint], str | None]:
        return self._call("points_page", table, cursor, limit)

    def get_state(self, name: str) -> dict[str, Any] | None:
        return self._call("get_state", name)

    def set_state(self, name: str, value: dict[str, Any] | None) -> None:
        self._call("set_state", name, value)

    def list_states(self, prefix: str) -> dict[str, dict[str, Any]]:
        return self._call("list_states", prefix)

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        self._call("upsert_points", list(points))

    def delete(self, point_ids: Sequence[str]) -> None:
        self._call("delete_points", list(point_ids))


@dataclass
class OpenStore:
    store: PointStore
    #: how the store was reached, for the report
    how: str
    close: Callable[[], None]


def open_store(config: Config, writable: bool = True) -> OpenStore:
    """The configured store, directly or through the pipeline that holds it (module docstring).

    ``writable``: prepared for writes as ``run`` prepares it (collection or table created,
    dimension checked against the model); without it nothing is created and the model's
    configuration is not loaded (a read-only verify starts seconds sooner).  Raises
    :class:`VerifyError` or :class:`SinkError` (one line) when neither way works.
    """
    from actors.embedder import model_dimension
    from cluster.runtime import absolute_store_path

    sink_config = config.sink
    if sink_config.kind == "qdrant" and not sink_config.url and sink_config.path == ":memory:":
        raise VerifyError(
            "sink.path = ':memory:' lives inside the process that opened it and cannot be verified; "
            "use a path or sink.url"
        )
    absolute_store_path(config)
    if sink_config.kind == "qdrant" and not sink_config.url and _held_by_its_pipeline(config):
        try:
            return _through_owner(Path(sink_config.path))
        except VerifyError:
            pass  # that run may be exiting: open the store as below, which waits for its release
    try:
        sink = open_sink(sink_config)
    except SinkError as exc:
        if _LOCKED not in str(exc):
            raise
        return _through_owner(Path(sink_config.path))
    if writable:
        try:
            sink.ensure_ready(model_dimension(config.embedding.model))  # as `run` does; a wrong dimension stops here
        except BaseException:
            sink.close()
            raise
    return OpenStore(sink, "direct", sink.close)


def _held_by_its_pipeline(config: Config) -> bool:
    """The store's lock is held by the process its owner file names: a running pipeline's writer.

    Then verify goes through that writer at once; opening the store would first wait for a
    release that a running pipeline never makes.
    """
    from actors.sinks.qdrant.edge import lock_holder

    path = Path(config.sink.path)
    holder = lock_holder(path, config.sink.collection)
    if holder is None:
        return False
    try:
        return int(json.loads((path / OWNER_FILE).read_text())["pid"]) == holder
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _through_owner(path: Path) -> OpenStore:
    """Join the Ray of the writer actor that holds the embedded store at ``path``."""
    record_path = path / OWNER_FILE
    try:
        record = json.loads(record_path.read_text())
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        raise VerifyError(
            f"the embedded Qdrant store at {path} is open in another process that is not a running embedcluster "
            f"pipeline (no {OWNER_FILE} beside it); stop that process and run verify again"
        ) from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise VerifyError(
            f"the embedded Qdrant store at {path} is open in another process, and the pipeline named in "
            f"{record_path} (pid {pid}) is gone; stop the process holding the store and run verify again"
        ) from None
    except PermissionError:
        pass  # alive, another user's: joining its Ray fails below with a clear line
    _join_settings(record.get("auth_mode") or "")
    import ray

    from cluster.runtime import start_ray

    try:
        start_ray(record["gcs_address"], quiet=True)
        writer = ray.get_actor(record["actor"], namespace=record["namespace"])
        owner = ray.get(writer.owner.remote(), timeout=CALL_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is one line
        ray.shutdown()
        raise VerifyError(
            f"the embedded Qdrant store at {path} is held by a running pipeline (pid {pid}), but its Ray at "
            f"{record.get('gcs_address')} cannot be reached: {error_line(exc)}"
        ) from None
    if not owner or owner.get("pid") != pid or record.get("path") != str(path):
        ray.shutdown()
        raise VerifyError(f"the writer actor reached through {record_path} does not hold the store at {path}")
    return OpenStore(WriterStore(writer), f"through the running pipeline's writer (pid {pid})", ray.shutdown)


def _join_settings(auth_mode: str) -> None:
    """Settings for joining a Ray cluster at an explicit address, before Ray reads them.

    Ray turns token authentication on by itself only for a cluster it finds (``auto``); for
    an address it must be told (``RAY_AUTH_MODE``), as the pipeline's Ray was started.  Ray
    reads the setting when first imported: if it is imported already, its configuration is
    read again, as Ray's own ``auto`` path does.  A Ray that does not answer fails in seconds
    instead of after Ray's many retries.
    """
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "10")
    if not auth_mode or "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = auth_mode
    if "ray" in sys.modules:
        try:
            from ray._raylet import Config as RayConfig

            RayConfig.initialize("")
        except Exception:  # noqa: BLE001 - an older Ray without token auth: nothing to refresh
            pass


def _embedder(config: Config) -> Callable[[list[str]], np.ndarray]:
    """``embed`` for a repair: the configured model in this process, loaded on first use."""
    loaded: list[Any] = []

    def embed(texts: list[str]) -> np.ndarray:
        if not loaded:
            from actors.embedder import Embedder

            loaded.append(Embedder.from_config(config.embedding, config.embedding.threads))
        return loaded[0].embed(texts)

    return embed


def verify(config: Config, table: str | None = None, repair: bool = False, timeout: float = 60.0,
           chunk: int | None = None) -> Report:
    """Compare (and with ``repair`` fix) the store against the source tables: see ``actors/verify.py``.

    Raises :class:`VerifyError` (one line) when it cannot run or finish.
    """
    from actors.embedder import EmbedderError

    try:
        specs = inspect_source(config.source, config.tables)
        if table is not None:
            name = _table_name(table)
            if name not in specs:
                raise VerifyError(f"table {table} is not configured (tables: {', '.join(specs)})")
            specs = {name: specs[name]}
        opened = open_store(config, writable=repair)
        try:
            source = PgRowSource(config.source, specs, config.source.slot, timeout=timeout)
            try:
                verifier = Verifier(specs, source, opened.store, config.source.slot,
                                    chunk=chunk or config.source.backfill_chunk,
                                    embed=_embedder(config) if repair else None)
                report = verifier.run(repair=repair)
            finally:
                source.close()
        finally:
            opened.close()
    except (SourceError, SinkError, EmbedderError) as exc:
        raise VerifyError(str(exc)) from None
    except psycopg.Error as exc:
        raise VerifyError(f"PostgreSQL failed during verify: {error_line(exc)}") from None
    report.store = opened.how
    return report


def _table_name(table: str) -> str:
    """``table`` spelled as the config spells table names (``public.`` added, quoting canonical)."""
    try:
        return qualified_name(*split_qualified(table))
    except ValueError as exc:
        raise VerifyError(f"--table {table!r} {exc}") from None


#: points deleted per call by forget
FORGET_PAGE = 1000


def forget(config: Config, table: str) -> int:
    """Delete every point of ``table`` from the store; returns how many.

    The explicit command for a table that was dropped from the source (the
    pipeline stops then, and never removes its points by itself) or removed
    from the config.  A configured table is refused: the pipeline would go on
    indexing it.  Page by page (memory stays bounded), directly or through the
    running pipeline's writer like verify; the slot is not touched.
    """
    name = _table_name(table)
    for index, configured in enumerate(config.tables):
        if configured.name == name:
            raise VerifyError(
                f"table {name} is still configured (tables[{index}]); remove it from the config first, "
                "or the pipeline would index it again"
            )
    try:
        opened = open_store(config, writable=False)
    except SinkError as exc:
        raise VerifyError(str(exc)) from None
    removed = 0
    try:
        cursor: str | None = None
        while True:
            points, cursor = opened.store.points_page(name, cursor, FORGET_PAGE)
            if points:
                opened.store.delete([p.id for p in points])
                removed += len(points)
            if cursor is None:
                return removed
    except SinkError as exc:
        raise VerifyError(f"{exc} ({removed} points of {name} were deleted before that)") from None
    finally:
        opened.close()


# -- printing ---------------------------------------------------------------------------------------


def _keys(examples: list[Any], count: int) -> str:
    text = ", ".join(json.dumps(d.key, ensure_ascii=False, default=str) + (f" ({d.reason})" if d.reason else "")
                     for d in examples)
    return text + (f", ... ({count - len(examples)} more)" if count > len(examples) else "")


def format_report(report: Report) -> list[str]:
    """The report as the lines ``verify`` prints: a table of counts, example keys, a verdict."""
    header = ["table", "rows", "points", *CLASSES]
    body = [[t.table, str(t.rows), str(t.points), *(str(t.counts[c]) for c in CLASSES)] for t in report.tables]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *body]]
    examples = [
        f"{c:<8} {t.table}: {_keys(t.examples[c], t.counts[c])}"
        for t in report.tables for c in CLASSES if t.counts[c]
    ]
    if examples:
        lines += ["", *examples]
    lines.append("")
    totals = report.totals
    if report.clean:
        lines.append("clean: every row has its point, as the pipeline writes it, and no point lacks its row")
    else:
        found = ", ".join(f"{totals[c]} {c}" for c in CLASSES)
        if report.repair:
            repaired = report.repaired
            lines.append(f"{report.differences} differences ({found}); repaired: {repaired['missing']} missing and "
                         f"{repaired['stale']} stale points written, {repaired['orphans']} orphans deleted")
        else:
            lines.append(f"{report.differences} differences ({found}); `embedcluster verify --repair` fixes them")
    if report.pipeline_running:
        lines.append(f"pipeline running: each snapshot compared once slot {report.slot} had confirmed it "
                     f"(waited {report.waited_s:.1f} s), {report.rechecked} keys re-checked; store read {report.store}")
    elif not report.slot_exists:
        lines.append(f"slot {report.slot} does not exist: no pipeline streams into this store; store read {report.store}")
    else:
        unconfirmed = "?" if report.unconfirmed_bytes is None else report.unconfirmed_bytes
        lines.append(f"slot {report.slot} is not active (no pipeline running): {unconfirmed} bytes of WAL not "
                     f"confirmed yet; differences may be changes not applied yet; store read {report.store}")
    lines += [f"note: {n}" for n in report.notes]
    return lines
