"""The change model shared by reader, embedders and writer.

A :class:`Change` is one row-level change decoded from the source, already
rendered to the text that gets embedded.  Changes travel in :class:`ChangeBatch`
objects; a batch carries the only LSN that may ever be acknowledged to
PostgreSQL for it (``ack_lsn``), see the class docstring for why.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

# Fixed namespace: point ids must be identical across processes, restarts and
# versions, otherwise a replay would create duplicates instead of overwriting.
POINT_ID_NAMESPACE = uuid.UUID("6f1c0c47-58a9-4d0b-9a8e-2f5b1c3e7d11")


# One encoder for every key: ``json.dumps`` with non-default options builds a
# new encoder per call, which was half the cost of a point id.
_KEY_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
_NAMESPACE_BYTES = POINT_ID_NAMESPACE.bytes


def canonical_key(table: str, key: tuple[Any, ...] | list[Any]) -> str:
    """Stable textual form of ``table`` + primary key (JSON, no spaces)."""
    return _KEY_ENCODER.encode([table, list(key)])


def point_id(table: str, key: tuple[Any, ...] | list[Any]) -> str:
    """Deterministic vector id (a UUID string) for one source row.

    Derived only from the qualified table name and the primary-key values, so
    replaying a change overwrites the same point instead of adding another.
    Equal to ``str(uuid.uuid5(POINT_ID_NAMESPACE, canonical_key(table, key)))``
    (RFC 4122 version 5), computed without the intermediate ``UUID`` object:
    the writer derives one id per change.
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + canonical_key(table, key).encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def text_hash(text: str) -> str:
    """Content hash of the rendered text (lets the writer skip unchanged text)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def format_lsn(lsn: int | None) -> str:
    """``0/16B3748`` form used by PostgreSQL; ``-`` for None."""
    if lsn is None:
        return "-"
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str | None) -> int | None:
    """Inverse of :func:`format_lsn`."""
    if not text:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass(slots=True)
class Change:
    """One decoded row change.

    ``op`` is ``"upsert"`` for inserts, updates and backfilled rows,
    ``"delete"`` for deletes, and ``"truncate"`` removes every row of
    ``table``.  ``key`` holds the primary-key values in key column order.
    ``text`` and ``payload`` are ``None`` for deletes.  ``lsn`` is the commit
    LSN of the source transaction (0 for backfill).  ``text_unchanged`` marks
    an update whose rendered text equals the text the reader emitted last for
    that key: it needs no embedding, only a payload update.
    """

    op: Literal["upsert", "delete", "truncate"]
    table: str
    key: tuple[Any, ...]
    text: str | None = None
    payload: dict[str, Any] | None = None
    lsn: int = 0
    text_unchanged: bool = False

    @property
    def point_id(self) -> str:
        return point_id(self.table, self.key)


@dataclass(slots=True)
class ChangeBatch:
    """A slice of the change stream, in source commit order.

    ``ack_lsn`` is the position that may be confirmed to the replication slot
    once *this batch and every earlier batch* are durably written.  It is the
    end LSN of the last transaction that is complete at the end of this batch
    (or the server's idle position when the batch ends between transactions),
    and ``None`` when the batch ends inside a transaction that started in an
    earlier batch and nothing new completed: confirming anything then could
    skip the rest of that transaction after a crash.
    """

    seq: int
    changes: list[Change] = field(default_factory=list)
    ack_lsn: int | None = None
    #: "backfill" (snapshot rows) or "stream" (replication)
    phase: str = "stream"
    #: set on the last backfill batch: once written, the snapshot is complete
    snapshot_complete: bool = False
    #: the chunked backfill's plan (actors/backfill.py) once this batch is written: set when
    #: the batch holds the last row of a chunk; the writer stores it after the batch's points
    backfill: dict[str, Any] | None = None
    #: rows of the chunked backfill in this batch
    backfill_rows: int = 0
    #: a chunked backfill begins with this batch (``embedcluster backfill``, a table added to
    #: the config): ``{"tables": [...], "total": {"rows", "estimate"}}``; the writer starts its
    #: generation before the batch's changes
    backfill_begin: dict[str, Any] | None = None
    #: commit time (Unix seconds, the source's clock) of the last transaction this batch
    #: completes; None when it completes none.  For the freshness figure (commit -> written).
    commit_time: float | None = None

    def __len__(self) -> int:
        return len(self.changes)

    def texts_to_embed(self) -> list[str]:
        """Texts of the upserts that need a vector, in batch order (what the embedder receives)."""
        return [c.text or "" for c in self.changes if c.op == "upsert" and not c.text_unchanged]


@dataclass(slots=True)
class EmbeddedVectors:
    """What an embedding actor returns for a batch in which some texts failed to embed.

    ``vectors`` has one row per text to embed (the failed rows are zeros and must
    not be written); ``errors`` maps the failed rows' indexes to one error line
    each.  A batch whose texts all embedded is returned as a plain array.
    """

    vectors: Any
    errors: dict[int, str]
