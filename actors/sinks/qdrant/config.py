"""``[sink]`` with ``kind = "qdrant"``: a Qdrant server (``url``) or the embedded store (``path``)."""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr, field_validator

from actors.config import Section, check_identifier


class QdrantSinkConfig(Section):
    """``[sink]`` for Qdrant.  Imports nothing heavy: ``cluster/config.py`` composes it."""

    kind: Literal["qdrant"] = "qdrant"
    collection: str = "embedcluster"
    #: a Qdrant server or cloud URL; empty = the embedded store at ``path``
    url: str = ""
    #: the embedded store's directory; ":memory:" = in-process, NOT durable (benchmarks only)
    path: str = ".embedcluster/qdrant"
    #: env EMBEDCLUSTER_QDRANT_API_KEY (set by cluster/config.py)
    api_key: SecretStr | None = None

    @field_validator("collection")
    @classmethod
    def _collection(cls, value: str) -> str:
        return check_identifier(value, "store")
