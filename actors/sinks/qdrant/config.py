"""``[sink]`` with ``kind = "qdrant"``: a Qdrant server (``url``) or the embedded Qdrant Edge store (``path``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from actors.config import Section, check_identifier


#: 32 MiB (a Qdrant server's default ``service.max_request_size_mb``) minus 1 MiB of headroom
DEFAULT_MAX_REQUEST_BYTES = (32 << 20) - (1 << 20)


class QdrantSinkConfig(Section):
    """``[sink]`` for Qdrant.  Imports nothing heavy: ``cluster/config.py`` composes it."""

    kind: Literal["qdrant"] = "qdrant"
    collection: str = "embedcluster"
    #: a Qdrant server or cloud URL; empty = the embedded Qdrant Edge store at ``path``
    url: str = ""
    #: the embedded store's directory (Qdrant Edge, under ``edge/<collection>/``; one process owns it);
    #: ":memory:" = a temporary Edge store without WAL, NOT durable (benchmarks only)
    path: str = ".embedcluster/qdrant"
    #: env EMBEDCLUSTER_QDRANT_API_KEY (set by cluster/config.py)
    api_key: SecretStr | None = None
    #: the largest request body the sink sends, in bytes; a call is split into as many
    #: requests as it takes.  A Qdrant server refuses bodies over its
    #: ``service.max_request_size_mb`` (32 MiB by default): the default stays 1 MiB below.
    #: Embedded, it bounds one call into Edge (the memory one request takes).  A single point over it is
    #: refused (PointTooLarge): raise both this and the server's limit for larger texts.
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=16 << 10)
    #: writer processes sharing the writes by point id (actors/writer.py: partitioned writers).
    #: A Qdrant server takes concurrent writers; the embedded store has one owner process (the
    #: writer, which also answers searches), so there it must stay 1.
    writers: int = Field(default=1, ge=1, le=64)

    @field_validator("collection")
    @classmethod
    def _collection(cls, value: str) -> str:
        return check_identifier(value, "store")

    @field_validator("writers")
    @classmethod
    def _one_owner_when_embedded(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and not info.data.get("url"):
            raise ValueError(
                f"{value} writers need a Qdrant server (sink.url): the embedded store is owned by one process, "
                "so set sink.writers = 1, or point sink.url at a Qdrant server")
        return value
