"""``embedcluster deadletter list|retry|drop``: the changes the writer set aside (``actors/deadletter.py``).

The records live in the store, so they are read (and resolved) the way ``verify`` reaches
it (:func:`cluster.verify.open_store`): directly, or through the running pipeline's writer
when it holds the embedded store.  ``retry`` writes each key's *current* row through the
normal write path (embed, upsert; delete when the row is gone), exactly as ``verify
--repair`` does, and removes the records that now succeed.  The slot is not touched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from actors.changes import format_lsn
from actors.deadletter import DeadLetter, DeadLetters, select
from actors.logs import error_line
from actors.sinks.base import SinkError
from actors.source_schema import SourceError, inspect_source
from actors.verify import PgRowSource, Verifier, VerifyError
from cluster.config import Config
from cluster.verify import _embedder, _table_name, open_store

__all__ = ["RetryReport", "drop", "format_letters", "letters", "retry"]


def _filter_table(table: str | None) -> str | None:
    return None if table is None else _table_name(table)


def letters(config: Config, table: str | None = None, key: list[Any] | None = None) -> list[DeadLetter]:
    """The dead letters of the configured slot (of ``table``, ``key``), oldest first."""
    try:
        opened = open_store(config, writable=False)
    except SinkError as exc:
        raise VerifyError(str(exc)) from None
    try:
        return select(DeadLetters(opened.store, config.source.slot).entries(), _filter_table(table), key)
    except SinkError as exc:
        raise VerifyError(str(exc)) from None
    finally:
        opened.close()


@dataclass
class RetryReport:
    resolved: list[DeadLetter] = field(default_factory=list)
    failed: list[DeadLetter] = field(default_factory=list)


def retry(config: Config, table: str | None = None, key: list[Any] | None = None) -> RetryReport:
    """Write the current rows of the dead-lettered keys; their records are removed when that
    succeeds, and updated (attempts, last seen, error) when it fails again."""
    report = RetryReport()
    try:
        specs = inspect_source(config.source, config.tables)
        opened = open_store(config, writable=True)
    except (SourceError, SinkError) as exc:
        raise VerifyError(str(exc)) from None
    try:
        store = DeadLetters(opened.store, config.source.slot)
        chosen = select(store.entries(), _filter_table(table), key)
        if not chosen:
            return report
        source = PgRowSource(config.source, specs, config.source.slot)
        try:
            verifier = Verifier(specs, source, opened.store, config.source.slot, embed=_embedder(config))
            for letter in chosen:
                spec = specs.get(letter.table)
                try:
                    if spec is None:
                        raise VerifyError(f"table {letter.table} is not configured any more; "
                                          "`embedcluster deadletter drop` removes the record")
                    verifier.repair(spec, {letter.point_id: list(letter.key)})
                except (VerifyError, SinkError, psycopg.Error, ValueError) as exc:
                    letter.attempts += 1
                    letter.last_seen = time.time()
                    letter.error = error_line(exc)
                    opened.store.set_state(store.name(letter.point_id), letter.as_doc())
                    report.failed.append(letter)
                    continue
                opened.store.set_state(store.name(letter.point_id), None)
                report.resolved.append(letter)
        finally:
            source.close()
    except (SourceError, SinkError) as exc:
        raise VerifyError(f"{exc} ({len(report.resolved)} dead letters were resolved before that)") from None
    finally:
        opened.close()
    return report


def drop(config: Config, table: str | None = None, key: list[Any] | None = None) -> list[DeadLetter]:
    """Remove the records (the changes are given up: ``verify`` still reports the keys)."""
    try:
        opened = open_store(config, writable=False)
    except SinkError as exc:
        raise VerifyError(str(exc)) from None
    try:
        store = DeadLetters(opened.store, config.source.slot)
        chosen = select(store.entries(), _filter_table(table), key)
        for letter in chosen:
            opened.store.set_state(store.name(letter.point_id), None)
        return chosen
    except SinkError as exc:
        raise VerifyError(str(exc)) from None
    finally:
        opened.close()


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def format_letters(found: list[DeadLetter]) -> list[str]:
    """The records as ``deadletter list`` prints them: one line each, then a count."""
    lines = []
    for d in found:
        lines.append(f"{d.table} {json.dumps(d.key, ensure_ascii=False, default=str)}  {d.op}  lsn {format_lsn(d.lsn or None)}  "
                     f"attempts {d.attempts}  first {_when(d.first_seen)}  last {_when(d.last_seen)} UTC  {d.error}")
    lines.append(f"{len(found)} dead letters" if found else "no dead letters")
    return lines
