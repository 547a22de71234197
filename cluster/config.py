"""The configuration file: component settings composed into sections, loaded from TOML.

Each component owns its settings model beside its code; this module only
places them in the file, adds the wiring's own sections (``[ray]``,
``[pipeline]``), applies environment overrides for secrets, and turns
validation errors into one line that names the TOML key (``ConfigError``):

=================  ==========================================================
``[source]``       :class:`actors.source_config.SourceConfig`
``[[tables]]``     :class:`actors.source_config.TableConfig`
``[embedding]``    :class:`actors.embedder.EmbeddingConfig`
``[sink]``         chosen by ``kind``: :class:`actors.sinks.qdrant.config.QdrantSinkConfig`
                   or :class:`actors.sinks.mysql.config.MySQLSinkConfig`
``[serve]``        :class:`serve_apps.config.ServeConfig`
=================  ==========================================================
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from actors.config import Section, check_custom_resources, mask_dsn
from actors.embedder import EmbeddingConfig
from actors.sinks.mysql.config import MySQLSinkConfig
from actors.sinks.qdrant.config import QdrantSinkConfig
from actors.source_config import SourceConfig, TableConfig
from serve_apps.config import ENV_API_KEY, ServeConfig

__all__ = [
    "Config", "ConfigError", "EmbeddingConfig", "MySQLSinkConfig", "PipelineConfig", "QdrantSinkConfig",
    "RayConfig", "ServeConfig", "SinkConfig", "SourceConfig", "TableConfig", "config_from_dict", "load_config",
    "mask_dsn",
]

ENV_SOURCE_DSN = "EMBEDCLUSTER_SOURCE_DSN"
ENV_SINK_PASSWORD = "EMBEDCLUSTER_SINK_PASSWORD"
ENV_SINK_URL_API_KEY = "EMBEDCLUSTER_QDRANT_API_KEY"
ENV_SERVE_API_KEY = ENV_API_KEY  # EMBEDCLUSTER_API_KEY: [serve] api_key

#: ``[sink] kind`` -> its settings model.  A new sink adds one line here.
SINK_KINDS: dict[str, type[Section]] = {"qdrant": QdrantSinkConfig, "mysql": MySQLSinkConfig}
DEFAULT_SINK_KIND = "qdrant"
#: which sink kind a secret from the environment belongs to
_SINK_SECRETS = {"mysql": (ENV_SINK_PASSWORD, "password"), "qdrant": (ENV_SINK_URL_API_KEY, "api_key")}

#: ``[sink]``: one model per kind, chosen by the ``kind`` key.
SinkConfig = Annotated[Union[QdrantSinkConfig, MySQLSinkConfig], Field(discriminator="kind")]


class ConfigError(ValueError):
    """Bad configuration; the message is one line naming the key and the fix."""


class RayConfig(Section):
    """``[ray]``: which Ray cluster to join ("" = start a local one on loopback)."""

    address: str = ""
    num_cpus: int | None = Field(default=None, ge=1)
    #: custom Ray resources the reader, the writer and the coordinator each request, such as
    #: ``{"embedcluster_control": 0.01}``: they run only on nodes that declare them (the head of
    #: ray-cluster.yaml), and a writer Ray restarts comes back there, beside its embedded store
    control_resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("control_resources")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        return check_custom_resources(value, "ray.control_resources")


class PipelineConfig(Section):
    """``[pipeline]``: flow control."""

    #: batches read but not yet written; bounds memory under any backlog
    max_inflight_batches: int = Field(default=0, ge=0, le=1024)  # 0 = 2 x actors + 2
    #: a store whose recorded position is behind the slot's (restored from a
    #: backup, another store, a re-created slot) is never resumed: "backfill"
    #: indexes the tables again from a fresh snapshot, "refuse" stops with one line
    on_store_behind: Literal["backfill", "refuse"] = "backfill"
    #: times a change that fails on its own is written before it becomes a dead letter
    write_attempts: int = Field(default=3, ge=1, le=100)
    #: dead letters the store may hold; past it the pipeline stops on purpose (a systematic error)
    max_dead_letters: int = Field(default=1000, ge=1, le=1_000_000)
    #: longest wait between retries (sink outage, failed attempt): the pipeline resumes this soon after a return
    max_retry_delay_s: float = Field(default=5.0, gt=0, le=300)

    def writer_retries(self) -> dict[str, Any]:
        """The writer's retry settings (``actors.writer.Writer`` keyword arguments)."""
        return {"max_attempts": self.write_attempts, "max_dead_letters": self.max_dead_letters,
                "max_retry_delay": self.max_retry_delay_s}


class Config(Section):
    """The whole ``embedcluster`` configuration."""

    source: SourceConfig
    tables: list[TableConfig] = Field(min_length=1)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    sink: SinkConfig = Field(default_factory=QdrantSinkConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_sink_kind(cls, data: Any) -> Any:
        # `kind` may be left out (the embedded Qdrant store); the union needs it to choose.
        if isinstance(data, dict) and isinstance(data.get("sink"), dict) and "kind" not in data["sink"]:
            data = {**data, "sink": {"kind": DEFAULT_SINK_KIND, **data["sink"]}}
        return data

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
    # The sink union puts the chosen kind into the location ("sink", "mysql",
    # "table"); the TOML key is sink.table.
    if len(loc) > 1 and loc[0] == "sink" and loc[1] in SINK_KINDS:
        loc = (loc[0], *loc[2:])
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _other_sink_key(loc: tuple[Any, ...]) -> str | None:
    """For an unknown key under ``[sink]``: the kind it belongs to, if another sink has it."""
    if len(loc) != 3 or loc[0] != "sink" or loc[1] not in SINK_KINDS:
        return None
    for kind, model in SINK_KINDS.items():
        if kind != loc[1] and loc[2] in model.model_fields:
            return kind
    return None


def _one_line(exc: ValidationError, origin: str) -> str:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = _location(loc)
    msg = err["msg"]
    if err["type"] == "missing":
        return f"{origin}: missing required key '{key}'"
    if err["type"] == "extra_forbidden":
        owner = _other_sink_key(loc)
        if owner:
            return (f"{origin}: key '{key}' belongs to sink.kind = '{owner}', not '{loc[1]}': remove it, "
                    f"or set sink.kind = '{owner}'")
        return f"{origin}: unknown key '{key}' (check the spelling against the README's config reference)"
    if err["type"] == "union_tag_invalid":
        kinds = ", ".join(f"'{k}'" for k in SINK_KINDS)
        return f"{origin}: {key}.kind: must be one of {kinds}, got {err['ctx']['tag']!r}"
    if err["type"] == "model_attributes_type" and key == "sink":
        return f"{origin}: sink must be a table of settings ([sink])"
    msg = msg.removeprefix("Value error, ")
    return f"{origin}: {key}: {msg}"


def config_from_dict(data: dict[str, Any], origin: str = "config", environ: dict[str, str] | None = None) -> Config:
    """Validate a config mapping, applying env-var overrides for secrets."""
    env = os.environ if environ is None else environ
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if env.get(ENV_SOURCE_DSN) and isinstance(data.setdefault("source", {}), dict):
        data["source"]["dsn"] = env[ENV_SOURCE_DSN]
    if env.get(ENV_SERVE_API_KEY) and isinstance(data.setdefault("serve", {}), dict):
        data["serve"]["api_key"] = env[ENV_SERVE_API_KEY]
    sink = data.get("sink")
    if sink is None or isinstance(sink, dict):
        # A secret in the environment belongs to one kind of sink only: the
        # MySQL password is no error in a Qdrant config, it just does not apply.
        kind = (sink or {}).get("kind", DEFAULT_SINK_KIND)
        kind = kind if isinstance(kind, str) else None
        variable, field = _SINK_SECRETS.get(kind, (None, None))
        if variable and env.get(variable):
            data["sink"] = {**(sink or {}), field: env[variable]}
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
