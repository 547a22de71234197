"""The API key check shared by the search app and the stats exporter (no web framework imported)."""

from __future__ import annotations

import hmac


def bearer_token_ok(authorization: bytes | str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <api_key>`` (scheme case-insensitive).

    The token is compared in constant time (:func:`hmac.compare_digest`), as bytes:
    any header byte is accepted without error, and wrong keys of the right
    length take as long to refuse as any other.  A ``str`` value is the header as
    ``http.server`` decodes it (ISO-8859-1), so it is encoded back the same way.
    """
    if not authorization:
        return False
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1", "surrogateescape")
    scheme, _, token = authorization.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), api_key.encode("utf-8"))
