"""``[serve]``: where the search app listens.  Imports nothing heavy (``cluster/config.py`` composes it)."""

from __future__ import annotations

from pydantic import Field

from actors.config import Section


class ServeConfig(Section):
    """``[serve]``: the HTTP search app."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    replicas: int = Field(default=1, ge=1, le=256)
