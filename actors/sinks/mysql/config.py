"""Settings of the MySQL sink: the ``[sink]`` section with ``kind = "mysql"``.

Imports nothing heavy (no pymysql, numpy): ``cluster/config.py`` imports this
model to compose the ``[sink]`` union.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from actors.config import Section, check_identifier, mask_dsn


class MySQLSinkConfig(Section):
    """``[sink]`` with ``kind = "mysql"``: a MySQL-family vector table."""

    kind: Literal["mysql"] = "mysql"
    #: ``mysql://user[:password]@host[:port]/database[?unix_socket=PATH&ssl_ca=FILE]``;
    #: may hold a password, so it is kept out of repr (log ``dsn_masked``)
    dsn: str = Field(default="", repr=False)
    #: the vector table; the sink also creates ``<table>_state`` beside it
    table: str = "embeddings"
    #: SQL dialect; "auto" asks the server (VERSION(), cloudsql_vector) and logs the choice
    dialect: Literal["auto", "cloudsql", "cloudsql-preview", "mariadb", "portable"] = "auto"
    #: similarity the index and the search use (only cosine is supported)
    distance: Literal["cosine"] = "cosine"
    #: overrides the DSN's password; set from EMBEDCLUSTER_SINK_PASSWORD by cluster/config.py
    password: SecretStr | None = None
    #: writer processes, each with its own connection, sharing the writes by point id
    #: (actors/writer.py: partitioned writers); every key's changes stay with one writer, in order
    writers: int = Field(default=1, ge=1, le=64)

    @field_validator("table")
    @classmethod
    def _table_identifier(cls, value: str) -> str:
        return check_identifier(value, "store")

    @property
    def dsn_masked(self) -> str:
        """The DSN with its password replaced by ``***`` (safe to log)."""
        return mask_dsn(self.dsn)
