"""``[serve]``: where the search app listens and who may use it.

Imports nothing heavy (``cluster/config.py`` composes it).
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from actors.config import Section

#: the environment variable that sets ``[serve] api_key`` (applied by ``cluster/config.py``)
ENV_API_KEY = "EMBEDCLUSTER_API_KEY"
#: the shortest API key accepted (a bearer token must not be guessable)
MIN_API_KEY_LENGTH = 16
_KEY = re.compile(rf"[\x21-\x7e]{{{MIN_API_KEY_LENGTH},}}")


def is_loopback(host: str) -> bool:
    """True for hosts only this machine can reach: ``localhost``, 127.0.0.0/8 and ``::1``
    (also written ``[::1]`` or ``::ffff:127.x.y.z``)."""
    name = host.strip().lower().removeprefix("[").removesuffix("]")
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # a host name or "0.0.0.0"-like wildcard spelled otherwise: reachable from elsewhere
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def exposure_error(host: str, has_key: bool, allow_unauthenticated: bool) -> str | None:
    """Why serving on ``host`` this way is refused (one line naming the key and the fix), or None."""
    if has_key or allow_unauthenticated or is_loopback(host):
        return None
    return (
        f"serve.api_key is required because serve.host = {host!r} is not a loopback address: set serve.api_key "
        f"(or env {ENV_API_KEY}) so clients must send 'Authorization: Bearer <key>', "
        "or set serve.allow_unauthenticated = true to serve without a key on purpose"
    )


class ServeConfig(Section):
    """``[serve]``: the HTTP search app.

    With ``api_key`` set (or env ``EMBEDCLUSTER_API_KEY``) every route but
    ``/healthz`` needs ``Authorization: Bearer <key>``.  A ``host`` that is not
    loopback needs a key, unless ``allow_unauthenticated = true`` says to serve
    without one on purpose.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    #: replicas of the HTTP front (parsing, auth, the page)
    replicas: int = Field(default=1, ge=1, le=256)
    #: replicas of the query model (QueryEmbedder): concurrent queries share its forward passes
    embedding_replicas: int = Field(default=1, ge=1, le=256)
    #: a second, light endpoint for frequent scraping (GET /metrics and /stats served by the
    #: coordinator itself, on ``host``; the same API key): 0 = none
    metrics_port: int = Field(default=0, ge=0, le=65535)
    #: serve a non-loopback ``host`` without an API key (logged as a WARNING)
    allow_unauthenticated: bool = False
    #: the bearer token every route but /healthz requires; env EMBEDCLUSTER_API_KEY overrides.
    #: Validated after ``host`` and ``allow_unauthenticated`` (field order), which it checks.
    api_key: SecretStr | None = Field(default=None, validate_default=True)

    @field_validator("api_key")
    @classmethod
    def _key_off_loopback(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            value = None  # api_key = "" is no key
        if value is not None and not _KEY.fullmatch(value.get_secret_value()):
            raise ValueError(
                f"must be at least {MIN_API_KEY_LENGTH} printable ASCII characters without spaces "
                "(it is sent as 'Authorization: Bearer <key>'; e.g. the output of `openssl rand -hex 32`)"
            )
        host = info.data.get("host")
        if isinstance(host, str):
            error = exposure_error(host, value is not None, bool(info.data.get("allow_unauthenticated", False)))
            if error:
                raise ValueError(error.removeprefix("serve.api_key is "))
        return value

    def exposure_error(self) -> str | None:
        """The refusal of :func:`exposure_error` for these settings (checked again before start-up:
        ``host`` may have been assigned after validation)."""
        return exposure_error(self.host, self.api_key is not None, self.allow_unauthenticated)

    @property
    def api_key_value(self) -> str | None:
        """The API key in clear (None when there is none)."""
        return self.api_key.get_secret_value() if self.api_key is not None else None

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is reachable from this machine only."""
        return is_loopback(self.host)
