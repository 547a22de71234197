"""Validated configuration, loaded from TOML with env-var overrides for secrets.

One pydantic model per component.  Errors are turned into one line that names
the offending key (``ConfigError``).  Secrets (DSN passwords) are kept in
``SecretStr`` or masked, so they never show up in ``repr`` or logs.
"""

from __future__ import annotations

import os
import re
import string
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_SOURCE_DSN = "EMBEDCLUSTER_SOURCE_DSN"
ENV_SINK_PASSWORD = "EMBEDCLUSTER_SINK_PASSWORD"
ENV_SINK_URL_API_KEY = "EMBEDCLUSTER_QDRANT_API_KEY"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


class ConfigError(ValueError):
    """Bad configuration; the message is one line naming the key and the fix."""


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (safe to log)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable dsn>"
    if parts.password is None:
        # key=value form: hide password=...
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Section):
    """``[source]``: the PostgreSQL database to follow."""

    dsn: SecretStr
    slot: str = "embedcluster"
    publication: str = "embedcluster"
    #: upper bound on changes in one batch handed to the embedders
    max_batch_changes: int = Field(default=256, ge=1, le=100_000)
    #: rows per primary-key chunk while backfilling existing rows
    backfill_chunk: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("slot", "publication")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9_]{1,63}", value):
            raise ValueError("must be 1-63 characters of lower-case letters, digits and '_'")
        return value

    @property
    def dsn_value(self) -> str:
        return self.dsn.get_secret_value()

    @property
    def dsn_masked(self) -> str:
        return mask_dsn(self.dsn_value)


class TableConfig(_Section):
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
        if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
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
            if not _IDENT.match(name):
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


class EmbeddingConfig(_Section):
    """``[embedding]``: model and actor pool."""

    model: str = "default"
    actors: int = Field(default=1, ge=1, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(default=64, ge=1, le=8192)
    #: token budget per forward pass (texts sorted by length, cut by total
    #: tokens); 0 = 4096 on CPU (measured best here), 16384 on CUDA
    max_batch_tokens: int = Field(default=0, ge=0)
    #: torch threads per actor on CPU; 0 = cores / actors
    threads: int = Field(default=0, ge=0, le=512)
    #: CPU: an actor runs threads / threads_per_worker model workers, each
    #: doing whole forward passes with this many torch threads.  1 (default)
    #: is the fastest for throughput (no barriers between threads); more
    #: shortens the latency of one large pass.
    threads_per_worker: int = Field(default=1, ge=1, le=512)
    #: CPUs Ray reserves per embedding actor
    cpus_per_actor: float = Field(default=1.0, ge=0)
    #: GPUs per actor on CUDA (fractions share one GPU)
    gpus_per_actor: float = Field(default=1.0, ge=0)
    #: "auto" = fp16 on CUDA; on CPU bf16 where the CPU has native bf16
    #: (AVX512-BF16 / AMX), else fp32
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_length: int = Field(default=0, ge=0, le=8192)  # 0 = the model's own limit
    compile: bool = False


class SinkConfig(_Section):
    """``[sink]``: where vectors are written and searched."""

    kind: Literal["qdrant", "mysql"] = "qdrant"
    # qdrant
    collection: str = "embedcluster"
    url: str = ""
    path: str = ".embedcluster/qdrant"
    api_key: SecretStr | None = None
    # mysql (may hold a password: kept out of repr; log dsn_masked)
    dsn: str = Field(default="", repr=False)
    table: str = "embeddings"
    dialect: Literal["auto", "cloudsql", "cloudsql-preview", "mariadb", "portable"] = "auto"
    distance: Literal["cosine"] = "cosine"
    password: SecretStr | None = None

    @field_validator("collection", "table")
    @classmethod
    def _sink_identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", value):
            raise ValueError("must be 1-64 characters of letters, digits and '_', not starting with a digit")
        return value

    @property
    def dsn_masked(self) -> str:
        return mask_dsn(self.dsn)


class ServeConfig(_Section):
    """``[serve]``: the HTTP search app."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    replicas: int = Field(default=1, ge=1, le=256)


class RayConfig(_Section):
    """``[ray]``: which Ray cluster to join ("" = start a local one on loopback)."""

    address: str = ""
    num_cpus: int | None = Field(default=None, ge=1)


class PipelineConfig(_Section):
    """``[pipeline]``: flow control."""

    #: batches read but not yet written; bounds memory under any backlog
    max_inflight_batches: int = Field(default=0, ge=0, le=1024)  # 0 = 2 x actors + 2


class Config(_Section):
    """The whole ``embedcluster`` configuration."""

    source: SourceConfig
    tables: list[TableConfig] = Field(min_length=1)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    sink: SinkConfig = Field(default_factory=SinkConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @field_validator("tables")
    @classmethod
    def _unique_tables(cls, tables: list[TableConfig]) -> list[TableConfig]:
        names = [t.name for t in tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"table {dupes[0]} is listed twice")
        return tables

    def table(self, name: str) -> TableConfig:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def inflight_batches(self) -> int:
        return self.pipeline.max_inflight_batches or 2 * self.embedding.actors + 2


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _one_line(exc: ValidationError, origin: str) -> str:
    err = exc.errors()[0]
    key = _location(err["loc"])
    msg = err["msg"]
    if err["type"] == "missing":
        return f"{origin}: missing required key '{key}'"
    if err["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{key}' (check the spelling against the README's config reference)"
    msg = msg.removeprefix("Value error, ")
    return f"{origin}: {key}: {msg}"


def config_from_dict(data: dict[str, Any], origin: str = "config", environ: dict[str, str] | None = None) -> Config:
    """Validate a config mapping, applying env-var overrides for secrets."""
    env = os.environ if environ is None else environ
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if env.get(ENV_SOURCE_DSN) and isinstance(data.setdefault("source", {}), dict):
        data["source"]["dsn"] = env[ENV_SOURCE_DSN]
    sink = data.setdefault("sink", {})
    if isinstance(sink, dict):
        if env.get(ENV_SINK_PASSWORD):
            sink["password"] = env[ENV_SINK_PASSWORD]
        if env.get(ENV_SINK_URL_API_KEY):
            sink["api_key"] = env[ENV_SINK_URL_API_KEY]
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, origin)) from None


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} not found; pass an existing file with --config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return config_from_dict(data, origin=str(p), environ=environ)
