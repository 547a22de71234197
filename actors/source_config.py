"""Settings of the change source: ``[source]`` (the database and slot) and ``[[tables]]``.

Owned by the CDC reader (``actors/cdc_reader.py``) and the source inspection
(``actors/source_schema.py``); ``cluster/config.py`` only places them in the file.
"""

from __future__ import annotations

import string

from pydantic import Field, SecretStr, field_validator

from actors.config import Section, check_identifier, identifier_error, mask_dsn


class SourceConfig(Section):
    """``[source]``: the PostgreSQL database to follow."""

    dsn: SecretStr  # env EMBEDCLUSTER_SOURCE_DSN overrides (cluster/config.py)
    slot: str = "embedcluster"
    publication: str = "embedcluster"
    #: upper bound on changes in one batch handed to the embedders
    max_batch_changes: int = Field(default=256, ge=1, le=100_000)
    #: rows per primary-key chunk while backfilling existing rows
    backfill_chunk: int = Field(default=1000, ge=1, le=100_000)

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

    @field_validator("name")
    @classmethod
    def _qualified(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) == 1:
            parts = ["public", parts[0]]
        if len(parts) != 2 or any(identifier_error(p, "pg") for p in parts):
            raise ValueError("must be 'schema.table' or 'table' made of letters, digits and '_'")
        return ".".join(parts)

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
            if identifier_error(name, "pg"):
                raise ValueError(f"placeholder {{{name}}} must be a plain column name")
        return value

    @property
    def schema_name(self) -> str:
        return self.name.split(".")[0]

    @property
    def table_name(self) -> str:
        return self.name.split(".")[1]

    @property
    def text_columns(self) -> list[str]:
        seen: list[str] = []
        for _, field, _, _ in string.Formatter().parse(self.text):
            if field is not None and field not in seen:
                seen.append(field)
        return seen
