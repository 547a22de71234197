"""Settings of the change source: ``[source]`` (the database and slot) and ``[[tables]]``.

Owned by the CDC reader (``actors/cdc_reader.py``) and the source inspection
(``actors/source_schema.py``); ``cluster/config.py`` only places them in the file.
"""

from __future__ import annotations

import string
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from actors.config import Section, check_identifier, mask_dsn

#: PostgreSQL keeps at most this many bytes of a name (NAMEDATALEN - 1)
MAX_NAME_BYTES = 63
#: characters that mean something in a str.format field name: a template
#: placeholder naming a column can not contain them
_FORMAT_SPECIALS = set(".[]!:{}")


def split_qualified(name: str) -> tuple[str, str]:
    """``(schema, table)`` of a table name as the config spells it.

    ``table`` or ``schema.table``; each part is taken literally (upper case,
    spaces and non-ASCII letters included: ``public.Café Orders``), or
    double-quoted when it holds a dot or a quote (``"odd.schema"."x.y"``; a
    quote inside is doubled, as in SQL).  ValueError says what is wrong.
    """
    parts: list[str] = []
    i, n = 0, len(name)
    while True:
        if i < n and name[i] == '"':
            j, part = i + 1, []
            while True:
                k = name.find('"', j)
                if k < 0:
                    raise ValueError("has an unterminated double quote")
                part.append(name[j:k])
                if name[k + 1 : k + 2] == '"':  # a doubled quote is one quote
                    part.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            parts.append("".join(part))
        else:
            k = name.find(".", i)
            part_text = name[i:] if k < 0 else name[i:k]
            if '"' in part_text:
                raise ValueError("must double-quote a name part that holds a double quote, doubling it inside")
            if part_text != part_text.strip():
                raise ValueError("has a name part with leading or trailing spaces; quote it to mean them")
            parts.append(part_text)
            i = n if k < 0 else k
        if i == n:
            break
        if name[i] != ".":
            raise ValueError("has characters after a quoted name part; separate schema and table with '.'")
        i += 1
    if len(parts) == 1:
        parts = ["public", parts[0]]
    if len(parts) != 2:
        raise ValueError("must be 'schema.table' or 'table' (quote a part that holds a dot)")
    for part in parts:
        if not part:
            raise ValueError("has an empty schema or table name")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(f"has a name part longer than PostgreSQL's {MAX_NAME_BYTES} bytes: {part[:20]}...")
        if any(ord(c) < 32 for c in part):
            raise ValueError("has a control character (a newline?) in a name")
    return parts[0], parts[1]


def qualified_name(schema: str, table: str) -> str:
    """The one spelling of a table used everywhere (config, point ids, payload ``table``):
    ``schema.table``, a part double-quoted only when it holds a dot or a quote."""
    def part(p: str) -> str:
        return '"' + p.replace('"', '""') + '"' if ("." in p or '"' in p or p != p.strip()) else p

    return f"{part(schema)}.{part(table)}"


def placeholder_error(name: str) -> str | None:
    """Why ``{name}`` cannot stand for a column in a template, or None when it can."""
    if not name or name.isdigit():
        return "must name a column (positional fields like {} or {0} are not columns)"
    if _FORMAT_SPECIALS & set(name):
        return "must be a plain column name (no '.', '[', ']', '!', ':' in it)"
    if any(ord(c) < 32 for c in name):
        return "must not hold a control character (a newline?)"
    return None


class SourceConfig(Section):
    """``[source]``: the PostgreSQL database to follow."""

    dsn: SecretStr  # env EMBEDCLUSTER_SOURCE_DSN overrides (cluster/config.py)
    slot: str = "embedcluster"
    publication: str = "embedcluster"
    #: upper bound on changes in one batch handed to the embedders
    max_batch_changes: int = Field(default=256, ge=1, le=100_000)
    #: rows per primary-key chunk while backfilling existing rows
    backfill_chunk: int = Field(default=1000, ge=1, le=100_000)
    #: how existing rows are read: "chunks" (key chunks read beside the stream, reconciled by
    #: watermarks in the WAL; resumable; actors/backfill.py) or "snapshot" (one exported
    #: snapshot read before streaming starts; a failure starts it over)
    backfill_mode: Literal["chunks", "snapshot"] = "chunks"
    #: connections reading chunks in parallel (backfill_mode = "chunks"), over key ranges cut
    #: from the first key column's statistics
    backfill_readers: int = Field(default=1, ge=1, le=64)
    #: WAL the slot may hold unconfirmed before ``status`` and ``/stats`` warn (and the log,
    #: at most once a minute); 0 = never warn.  See README, max_slot_wal_keep_size.
    max_lag_bytes: int = Field(default=1 << 30, ge=0)

    @field_validator("slot", "publication")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return check_identifier(value, "pg_slot")

    @property
    def dsn_value(self) -> str:
        return self.dsn.get_secret_value()

    @property
    def dsn_masked(self) -> str:
        return mask_dsn(self.dsn_value)


class TableConfig(Section):
    """``[[tables]]``: one source table, how to render its text and payload."""

    name: str
    text: str = "{description}"
    payload: list[str] = Field(default_factory=list)
    #: payload columns searches filter on: the store indexes them (Qdrant payload indexes)
    filterable: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _qualified(cls, value: str) -> str:
        return qualified_name(*split_qualified(value))

    @field_validator("filterable")
    @classmethod
    def _filterable_in_payload(cls, value: list[str], info: ValidationInfo) -> list[str]:
        payload = info.data.get("payload")
        if isinstance(payload, list):
            for name in value:
                if name not in payload:
                    raise ValueError(f"lists {name!r}, which is not in this table's payload "
                                     f"({', '.join(payload) or 'empty'}): add it to payload too")
        return list(dict.fromkeys(value))

    @field_validator("text")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"is not a valid format template: {exc}") from None
        if not fields:
            raise ValueError("must reference at least one column, e.g. '{description}'")
        for name in fields:
            error = placeholder_error(name)
            if error:
                raise ValueError(f"placeholder {{{name}}} {error}")
        return value

    @property
    def schema_name(self) -> str:
        """The schema's name as the catalog has it (unquoted)."""
        return split_qualified(self.name)[0]

    @property
    def table_name(self) -> str:
        """The table's name as the catalog has it (unquoted)."""
        return split_qualified(self.name)[1]

    @property
    def text_columns(self) -> list[str]:
        seen: list[str] = []
        for _, field, _, _ in string.Formatter().parse(self.text):
            if field is not None and field not in seen:
                seen.append(field)
        return seen
