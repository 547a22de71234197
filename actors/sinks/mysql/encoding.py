"""Values as the sink stores them: vectors as ``[..]`` text or float32 bytes, canonical JSON, hashes."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Sequence

import numpy as np


def vector_to_text(vector: np.ndarray) -> str:
    """``[x1,x2,...]`` with 9 significant digits: enough to round-trip float32 exactly."""
    return "[" + ",".join(format(x, ".9g") for x in np.asarray(vector, dtype=np.float32).tolist()) + "]"


def parse_vector_text(text: str | bytes) -> np.ndarray:
    """Inverse of :func:`vector_to_text` for the ``[..]`` strings the servers return."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("ascii")
    body = text.strip().lstrip("[").rstrip("]").strip()
    if not body:
        return np.zeros(0, dtype=np.float32)
    return np.array([float(x) for x in body.split(",")], dtype=np.float32)


def vector_to_bytes(vector: np.ndarray) -> bytes:
    """Little-endian float32 bytes (the portable storage format)."""
    return np.asarray(vector, dtype="<f4").tobytes()


def content_hash(table: str, key: Sequence[Any], text: str, payload_json: str) -> str:
    """Hash of everything stored beside the vector (lets readers spot changed rows cheaply)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([table, list(key)], separators=(",", ":"), ensure_ascii=False, default=str).encode())
    h.update(b"\x00")
    h.update(text.encode("utf-8", "surrogatepass"))
    h.update(b"\x00")
    h.update(payload_json.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Infinity; the server would reject the document
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def dump_json(value: Any) -> str:
    """Canonical JSON text for JSON columns (sorted keys, non-JSON values as strings)."""
    try:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str, allow_nan=False
        )
    except ValueError:
        return json.dumps(_json_safe(value), separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str)

