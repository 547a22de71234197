"""Source errors that end the run, the bounded wait for a busy slot, the lag warning (no servers)."""

from __future__ import annotations

import pytest

import actors.cdc_reader as cdc_reader
from actors.cdc_reader import PgChangeSource
from actors.schema_watch import SchemaChanged
from actors.source_config import SourceConfig
from actors.source_schema import SlotInfo, SourceBusy, SourceError, SourceFatal, format_bytes, lag_warning
from cluster.config import ConfigError, config_from_dict
from cluster.pipeline import FAILED, is_fatal, is_permanent

GIB = 1 << 30


def source(**extra) -> PgChangeSource:  # noqa: ANN003
    config = config_from_dict(
        {"source": {"dsn": "postgresql://u@127.0.0.1:1/db", "slot": "ec", **extra}, "tables": [{"name": "books"}]},
        environ={},
    )
    return PgChangeSource(config.source, {})  # connects to nothing until start()


class Wrapped(Exception):
    """Like Ray's RayTaskError: the remote error as ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def test_fatal_errors_are_permanent_and_marked_through_wrappers():
    fatal = SourceFatal("slot gone")
    assert is_permanent(Wrapped(fatal)) and is_fatal(Wrapped(Wrapped(fatal)))
    # a schema change halts the pipeline (search keeps serving): permanent, not fatal
    assert is_permanent(SchemaChanged("column dropped")) and not is_fatal(SchemaChanged("column dropped"))
    # a restart of PostgreSQL, a busy slot: retried
    for transient in (SourceError("connection refused"), SourceBusy("slot in use")):
        assert not is_permanent(transient) and not is_fatal(Wrapped(transient))
    assert FAILED == "failed"


def test_max_lag_bytes_defaults_to_one_gib_and_is_checked():
    assert SourceConfig(dsn="postgresql://x@h/db").max_lag_bytes == GIB
    assert source(max_lag_bytes=0).source.max_lag_bytes == 0
    with pytest.raises(ConfigError, match="max_lag_bytes"):
        source(max_lag_bytes=-1)


def test_lag_warning_only_above_the_limit():
    behind = SlotInfo("ec", True, confirmed_lsn=1000, current_lsn=1000 + 3 * GIB, active=True)
    assert lag_warning(behind, 4 * GIB) is None
    assert lag_warning(behind, 0) is None  # 0: never warn
    line = lag_warning(behind, GIB)
    assert line is not None and "\n" not in line
    assert "slot ec is 3.0 GiB behind" in line and "source.max_lag_bytes = 1.0 GiB" in line
    assert "max_slot_wal_keep_size" not in line  # unlimited: nothing to quote
    capped = SlotInfo("ec", True, 1000, 1000 + 3 * GIB, True, wal_status="extended", safe_wal_size=512 << 20)
    assert "512.0 MiB more and max_slot_wal_keep_size invalidates the slot" in lag_warning(capped, GIB)
    assert lag_warning(SlotInfo("ec", False, None, 5000, False), 1) is None  # no slot: no lag


def test_an_invalidated_slot_is_always_warned_about():
    lost = SlotInfo("ec", True, 1000, 2000, False, wal_status="lost")
    assert "invalidated" in lag_warning(lost, 0) and "embedcluster drop" in lag_warning(lost, GIB)


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536, 5 << 20, 3 * GIB)] == [
        "0 bytes", "1023 bytes", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB"]


@pytest.mark.parametrize(("sqlstate", "message", "kind", "needle"), [
    ("53400", "all replication slots are in use", SourceFatal, "raise max_replication_slots"),
    ("42704", 'replication slot "ec" does not exist', SourceFatal, "was dropped while the pipeline used it"),
    ("55000", 'can no longer get changes from replication slot "ec"', SourceFatal, "invalidated"),
    ("42501", "must be superuser or replication role to start walsender", SourceFatal, "WITH REPLICATION"),
    ("08006", "server closed the connection", SourceError, "replication command failed"),
])
def test_replication_command_errors_say_whether_retrying_helps(sqlstate, message, kind, needle):
    error = source()._command_error(sqlstate, message)
    assert type(error) is kind and needle in str(error)
    assert is_fatal(error) == (kind is SourceFatal)


def test_a_busy_slot_is_waited_for_a_bounded_time(monkeypatch):
    monkeypatch.setattr(cdc_reader, "BUSY_POLL_S", 0.01)
    reader = source()
    calls = []

    def busy_twice():
        calls.append(1)
        if len(calls) < 3:
            raise SourceBusy("replication slot ec is in use by process 7")
        return "streaming"

    reader.busy_wait_s = 5
    assert reader._wait_until_free(busy_twice) == "streaming" and len(calls) == 3

    def always_busy():
        raise SourceBusy("replication slot ec is in use by process 7")

    reader.busy_wait_s = 0.05
    with pytest.raises(SourceFatal, match="in use by process 7 .still so after 0 s"):
        reader._wait_until_free(always_busy)


def test_other_errors_are_not_waited_for():
    reader = source()
    reader.busy_wait_s = 30

    def refused():
        raise SourceError("cannot connect")

    with pytest.raises(SourceError) as info:
        reader._wait_until_free(refused)
    assert type(info.value) is SourceError


def test_the_reader_actor_takes_acks_beside_a_read():
    """``ack`` must not queue behind an idle ``read_batch`` in the actor (the slot lagged every
    written batch by up to the read's timeout): its own concurrency group; reads stay one at a time."""
    from actors.remote import CdcReaderActor

    meta = CdcReaderActor.__ray_metadata__
    groups = meta.method_meta.concurrency_group_for_methods
    assert groups.get("ack") == "control" and groups.get("position") == "control"
    assert all(name not in groups for name in ("read_batch", "start", "close", "slot_status"))
