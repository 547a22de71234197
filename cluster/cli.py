"""The ``embedcluster`` command line: parses arguments, prints results, exits.

The run lifecycle (checks, Ray, actors, search app, clean stop) is
``cluster/runtime.py``; every error reaches the user as one line (:func:`fail`).

``demo``    zero-configuration: private PostgreSQL + books, local Ray, embedded Qdrant, search app.
``run``     the pipeline and search app against a configured database, until SIGINT/SIGTERM.
``status``  slot, confirmed LSN, lag in bytes, rows applied.
``search``  ask the running search app; hits as a table (``--filter``, ``--mode``, ``--json``).
``drop``    drop the slot and the publication.
``verify``  compare the store with the tables (missing, stale, orphans); ``--repair`` fixes them.
``backfill`` index tables again beside the running stream (a request through the WAL).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

import click

from actors.logs import setup_logging
from cluster.config import Config, ConfigError, config_from_dict, load_config

log = logging.getLogger("embedcluster")


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, non-zero exit: how every user-facing error ends."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load(config_path: str) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        fail(str(exc))


@click.group()
@click.option("--log-level", default=lambda: os.environ.get("EMBEDCLUSTER_LOG_LEVEL", "INFO"),
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), show_default="INFO")
@click.pass_context
def main(ctx: click.Context, log_level: str) -> None:
    """Keep a vector index in sync with PostgreSQL and serve semantic search over it."""
    ctx.obj = {"log_level": log_level.upper()}
    setup_logging(log_level)


def run_pipeline(config: Config, log_level: str, banner: Any = None) -> None:
    """``run`` and ``demo``: the lifecycle is :func:`cluster.runtime.run`; this prints and exits."""
    from cluster import runtime
    from cluster.progress import BackfillProgress

    progress = BackfillProgress()

    def ready(url: str) -> None:
        click.echo(f"search app: {url}/   (API: {url}/search?q=battle+in+space&k=5)", err=False)
        if banner:
            banner(url)
        sys.stdout.flush()

    try:
        stats = runtime.run(config, log_level, on_ready=ready, on_stats=progress.update)
    except runtime.StartupError as exc:
        fail(str(exc))
    except runtime.PipelineFailed as exc:
        fail(str(exc), code=1)  # an error retrying cannot fix: its own line says what and how
    except runtime.PipelineLost as exc:
        fail(f"the pipeline coordinator stopped: {exc}", code=1)
    finally:
        progress.close()
    if stats is not None:
        # a backfill that finished after the last look (or before the serving loop's first one,
        # while the search app was still deploying) still gets its closing line
        progress.update(stats)
    if stats is None:
        click.echo("error: clean stop failed (see the log above)", err=True)
        return
    click.echo(
        f"stopped: slot {stats['slot']} confirmed {stats['confirmed_lsn']}, "
        f"{stats['rows_applied']} rows applied this run"
    )


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="TOML config file")
@click.pass_context
def run(ctx: click.Context, config_path: str) -> None:
    """Run the pipeline and the search app until SIGINT/SIGTERM."""
    run_pipeline(_load(config_path), ctx.obj["log_level"])


@main.command()
@click.option("--port", default=8000, show_default=True, type=int, help="search app port on 127.0.0.1")
@click.option("--state-dir", default=".embedcluster/demo", show_default=True, type=click.Path(file_okay=False),
              help="where the demo keeps its PostgreSQL data and Qdrant store")
@click.option("--pg-port", default=0, type=int, help="PostgreSQL port (default: a free one)")
@click.pass_context
def demo(ctx: click.Context, port: int, state_dir: str, pg_port: int) -> None:
    """Zero-configuration demo: private PostgreSQL with books, local Ray, embedded Qdrant."""
    import psycopg

    from cluster.demo import seed
    from cluster.loopback import free_port
    from cluster.pgserver import LocalPostgres, PostgresNotFound

    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    port_file = state / "pg.port"
    if not pg_port and port_file.exists():
        pg_port = int(port_file.read_text().strip() or 0)
    try:
        pg = LocalPostgres(state / "pgdata", port=pg_port or free_port())
    except PostgresNotFound as exc:
        fail(str(exc))
    try:
        pg.start()
    except Exception as exc:  # noqa: BLE001 - e.g. port taken
        fail(f"cannot start the demo PostgreSQL on port {pg.port}: {exc}; pass --pg-port with a free port")
    port_file.write_text(str(pg.port))
    try:
        dsn = pg.create_database("demo")
        with psycopg.connect(dsn, autocommit=True) as conn:
            seeded = seed(conn)
        config = config_from_dict(
            {
                "source": {"dsn": dsn},
                "tables": [{"name": "public.books", "text": "{description}",
                            "payload": ["name", "description", "author", "year"]}],
                "sink": {"kind": "qdrant", "path": str(state / "qdrant")},
                "serve": {"host": "127.0.0.1", "port": port},
            },
            origin="demo",
            environ={},
        )

        def banner(url: str) -> None:
            click.echo("")
            click.echo(f"  books table {'seeded with 8 books' if seeded else 'kept from the last run'}")
            click.echo(f"  search page: {url}/")
            click.echo(f"  try:         curl '{url}/search?q=battle+in+space&k=3'")
            click.echo(f"  add rows:    psql '{dsn}'")
            click.echo("  stop:        Ctrl-C")
            click.echo("")

        run_pipeline(config, ctx.obj["log_level"], banner=banner)
    finally:
        pg.stop()


@main.command("search")
@click.argument("query")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 100), help="how many hits")
@click.option("--filter", "filters", multiple=True, metavar="EXPR",
              help="'year>=1950', 'author=H.G. Wells', 'author in A,B' or a JSON filter; repeat: all hold")
@click.option("--mode", default="dense", show_default=True, type=click.Choice(["dense", "hybrid", "keyword"]))
@click.option("--table", default=None, help="only hits of this source table, e.g. public.books")
@click.option("--url", default=None, help="the search app (default: [serve] of --config, else http://127.0.0.1:8000)")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="TOML config: its [serve] address and api_key")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON answer")
def search_command(query: str, k: int, filters: tuple[str, ...], mode: str, table: str | None, url: str | None,
                   config_path: str | None, as_json: bool) -> None:
    """Search a running pipeline over HTTP and print the hits as a table."""
    from cluster import search as client

    api_key = os.environ.get("EMBEDCLUSTER_API_KEY") or None
    if config_path:
        config = _load(config_path)
        url = url or f"http://{config.serve.host}:{config.serve.port}"
        api_key = api_key or config.serve.api_key_value
    url = url or "http://127.0.0.1:8000"
    try:
        answer = client.search(url, query, k, client.parse_filters(filters), mode, table, api_key)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    from rich.console import Console

    Console().print(client.hits_table(answer))


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print one JSON document (for scripts)")
def status(config_path: str, as_json: bool) -> None:
    """Slot name, confirmed LSN, lag in bytes, rows applied."""
    from actors.changes import format_lsn
    from actors.source_schema import SourceError, connect, lag_warning, slot_info

    config = _load(config_path)
    try:
        with connect(config.source.dsn_value, config.source.dsn_masked, autocommit=True) as conn:
            info = slot_info(conn, config.source.slot)
    except SourceError as exc:
        fail(str(exc))
    rows: Any = "unknown (pipeline not running)"
    state = "not running"
    last_error = None
    dead_letters: Any = None
    backfill: dict[str, Any] | None = None
    try:
        url = f"http://{config.serve.host}:{config.serve.port}/stats"
        key = config.serve.api_key.get_secret_value() if config.serve.api_key else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=3) as resp:
            stats = json.load(resp)
        rows, state = stats.get("rows_applied"), stats.get("state")
        dead_letters = stats.get("dead_letters")
        backfill = stats.get("backfill")
        if state in ("halted", "recovering", "failed"):
            last_error = stats.get("last_error")
    except Exception:  # noqa: BLE001 - the pipeline is simply not up
        pass
    lagging = lag_warning(info, config.source.max_lag_bytes)  # from the slot itself: also with no pipeline
    if as_json:
        click.echo(json.dumps({
            "slot": info.slot, "exists": info.exists, "active": info.active,
            "confirmed_lsn": format_lsn(info.confirmed_lsn), "server_lsn": format_lsn(info.current_lsn),
            "lag_bytes": info.lag_bytes, "lag_warning": lagging, "pipeline": state,
            "rows_applied": rows if isinstance(rows, int) else None, "dead_letters": dead_letters,
            "last_error": last_error, "backfill": backfill,
        }, indent=2))
        return
    click.echo(f"slot:          {info.slot}{'' if info.exists else ' (does not exist)'}")
    click.echo(f"active:        {'yes' if info.active else 'no'}")
    click.echo(f"confirmed LSN: {format_lsn(info.confirmed_lsn)}")
    click.echo(f"server LSN:    {format_lsn(info.current_lsn)}")
    click.echo(f"lag bytes:     {info.lag_bytes if info.lag_bytes is not None else '-'}")
    if lagging:
        click.echo(f"warning:       {lagging}")
    click.echo(f"pipeline:      {state}")
    if last_error:
        click.echo(f"error:         {last_error}")
    click.echo(f"rows applied:  {rows}")
    if backfill:
        from cluster.progress import progress_line

        click.echo(f"backfill:      {progress_line(backfill)}")
    if dead_letters is not None:
        hint = " (embedcluster deadletter list)" if dead_letters else ""
        click.echo(f"dead letters:  {dead_letters}{hint}")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--yes", is_flag=True, help="really drop them")
def drop(config_path: str, yes: bool) -> None:
    """Drop the replication slot and the publication (the next run backfills again)."""
    from actors.source_schema import SourceError, connect, drop_publication, drop_slot

    config = _load(config_path)
    if not yes:
        fail(f"this drops slot {config.source.slot} and publication {config.source.publication}; "
             "pass --yes to confirm")
    slot, pub = config.source.slot, config.source.publication
    try:
        with connect(config.source.dsn_value, config.source.dsn_masked, autocommit=True) as conn:
            click.echo(f"dropped slot {slot}" if drop_slot(conn, slot) else f"slot {slot} does not exist")
            click.echo(f"dropped publication {pub}" if drop_publication(conn, pub) else f"publication {pub} does not exist")
    except SourceError as exc:
        fail(str(exc))


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--table", default=None, help="only this configured table")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document (for scripts)")
@click.option("--repair", is_flag=True, help="write missing and stale points, delete orphans (the slot is not moved)")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="seconds to wait for a running pipeline to confirm a snapshot's position")
@click.option("--chunk", default=0, type=click.IntRange(min=0), help="rows per primary-key chunk (0: source.backfill_chunk)")
def verify(config_path: str, table: str | None, as_json: bool, repair: bool, timeout: float, chunk: int) -> None:
    """Compare the store with the tables; exit 0 when equal, 1 on differences, 2 when it cannot run."""
    from cluster import verify as verifying

    config = _load(config_path)
    try:
        report = verifying.verify(config, table=table, repair=repair, timeout=timeout, chunk=chunk or None)
    except verifying.VerifyError as exc:
        fail(str(exc))
    click.echo(json.dumps(report.as_dict(), default=str) if as_json else "\n".join(verifying.format_report(report)))
    sys.exit(0 if report.clean else 1)


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--table", "tables", multiple=True, metavar="TABLE",
              help="a configured table to backfill (repeatable; default: every configured table)")
def backfill(config_path: str, tables: tuple[str, ...]) -> None:
    """Index tables' rows again (a changed template, say) without dropping the slot or stopping the stream.

    The request goes into the WAL: the pipeline acts on it where its stream reaches it, now if it
    runs, else when it next starts.  Its rows are read in key chunks beside the stream.
    """
    from actors.backfill import request_backfill
    from actors.changes import format_lsn, parse_lsn
    from actors.source_config import qualified_name, split_qualified
    from actors.source_schema import SourceError, connect, slot_info

    config = _load(config_path)
    names = []
    for name in tables:
        try:
            names.append(config.table(qualified_name(*split_qualified(name))).name)
        except (KeyError, ValueError):
            fail(f"--table {name} is not a configured table (configured: {', '.join(t.name for t in config.tables)})")
    names = names or [t.name for t in config.tables]
    slot = config.source.slot
    try:
        with connect(config.source.dsn_value, config.source.dsn_masked, autocommit=True) as conn:
            info = slot_info(conn, slot)
            if not info.exists:
                fail(f"slot {slot} does not exist yet: `embedcluster run --config {config_path}` backfills every "
                     "table when it starts")
            if conn.info.server_version < 140000:
                fail("backfilling beside the stream needs PostgreSQL 14 or later (logical decoding messages)")
            lsn = request_backfill(conn, slot, names)
    except SourceError as exc:
        fail(str(exc))
    click.echo(f"backfill of {', '.join(names)} requested at {format_lsn(parse_lsn(lsn))}: the pipeline of slot {slot} "
               "starts it where its stream reaches that position (`embedcluster status` shows its progress)")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--table", required=True, help="the table whose points to delete (not a configured one)")
@click.option("--yes", is_flag=True, help="really delete them")
def forget(config_path: str, table: str, yes: bool) -> None:
    """Delete a table's points from the store (a table dropped from the source or from the config)."""
    from cluster import verify as verifying

    config = _load(config_path)
    if not yes:
        fail(f"this deletes every point of table {table} from the store; pass --yes to confirm")
    try:
        removed = verifying.forget(config, table)
    except verifying.VerifyError as exc:
        fail(str(exc))
    click.echo(f"deleted {removed} points of {table}")


def _key_option(key: str | None) -> list[Any] | None:
    """``--key`` as JSON: ``5``, ``"abc"`` or ``["eu", 7]`` for a composite key."""
    if key is None:
        return None
    try:
        value = json.loads(key)
    except ValueError:
        value = key  # a bare text key
    return value if isinstance(value, list) else [value]


@main.group()
def deadletter() -> None:
    """Changes the sink kept rejecting, set aside so the slot moves on: list, retry, drop."""


def _deadletter_options(fn: Any) -> Any:
    fn = click.option("--key", default=None, help='only this key, as JSON (5, "abc", ["eu", 7])')(fn)
    fn = click.option("--table", default=None, help="only this table's")(fn)
    return click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))(fn)


@deadletter.command(name="list")
@_deadletter_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON document (for scripts)")
def deadletter_list(config_path: str, table: str | None, key: str | None, as_json: bool) -> None:
    """Every dead letter: table, key, operation, LSN, attempts, first and last seen, the error."""
    from cluster import deadletter as letters
    from cluster.verify import VerifyError

    config = _load(config_path)
    try:
        found = letters.letters(config, table, _key_option(key))
    except VerifyError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps([d.as_doc() for d in found], default=str))
    else:
        click.echo("\n".join(letters.format_letters(found)))


@deadletter.command(name="retry")
@_deadletter_options
def deadletter_retry(config_path: str, table: str | None, key: str | None) -> None:
    """Write the current rows of the dead-lettered keys; exit 1 when some still fail."""
    from cluster import deadletter as letters
    from cluster.verify import VerifyError

    config = _load(config_path)
    try:
        report = letters.retry(config, table, _key_option(key))
    except VerifyError as exc:
        fail(str(exc))
    for d in report.failed:
        click.echo(f"still failing: {d.table} {json.dumps(d.key, default=str)}: {d.error}")
    click.echo(f"{len(report.resolved)} dead letters resolved, {len(report.failed)} still failing")
    sys.exit(1 if report.failed else 0)


@deadletter.command(name="drop")
@_deadletter_options
@click.option("--yes", is_flag=True, help="really give the changes up")
def deadletter_drop(config_path: str, table: str | None, key: str | None, yes: bool) -> None:
    """Remove dead letters (their changes are given up; verify still reports the keys)."""
    from cluster import deadletter as letters
    from cluster.verify import VerifyError

    config = _load(config_path)
    if not yes:
        fail("this gives up the dead-lettered changes (verify --repair or deadletter retry would write them); "
             "pass --yes to confirm")
    try:
        dropped = letters.drop(config, table, _key_option(key))
    except VerifyError as exc:
        fail(str(exc))
    click.echo(f"dropped {len(dropped)} dead letters")


_BENCH_MODULES = {
    "embed": ("benchmarks.bench_embed", "embedding throughput: one-per-call vs sentence-transformers vs our actor pool"),
    "pipeline": ("benchmarks.bench_pipeline", "end-to-end rows/s, efficiency and commit->searchable latency"),
    "cdc": ("benchmarks.bench_cdc", "changes/s the CDC reader decodes from a real slot (no model, no sink)"),
    "backfill": ("benchmarks.bench_backfill", "backfill rows/s at 1, 2, 4 chunk readers vs one snapshot (no model, no sink)"),
    "writer": ("benchmarks.bench_writer", "upsert rows/s into a private MariaDB for batch sizes 64..1024"),
    "writers": ("benchmarks.bench_writers", "partitioned writers: rows/s the writer actors apply at [sink] writers = 1, 2, 4 (MariaDB)"),
    "confirm": ("benchmarks.bench_confirm", "commit -> in sink and commit -> slot confirmed latency, p50/p99"),
    "memory": ("benchmarks.bench_memory", "RSS of every Ray actor over a 200k-row backfill and a sink outage"),
    "search": ("benchmarks.bench_search", "POST /search QPS and p50/p95/p99 at concurrency 1..64, vs in-process"),
    "scrape": ("benchmarks.bench_scrape", "what scraping /metrics or /stats at 20 Hz costs the pipeline's throughput"),
    "sizing": ("benchmarks.sizing", "actors/GPUs needed for a target rows/s, and backfill time"),
}


@main.group()
def bench() -> None:
    """Benchmark suites (JSON + PNG under benchmarks/results/, a table on stdout)."""


def _bench_command(name: str, module: str, summary: str) -> None:
    @bench.command(name=name, help=f"{summary}. Options: embedcluster bench {name} --help",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
    @click.pass_context
    def command(ctx: click.Context) -> None:
        import importlib

        mod = importlib.import_module(module)
        # as if run as `python -m <module> <args>`: the result JSON records sys.argv as its command
        sys.argv = [module, *ctx.args]
        sys.exit(mod.main(list(ctx.args)))


for _name, (_module, _summary) in _BENCH_MODULES.items():
    _bench_command(_name, _module, _summary)


if __name__ == "__main__":  # pragma: no cover
    main()
