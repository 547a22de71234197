"""Security over real HTTP: the API key, the loopback rule, secrets kept out of output, SQL injection
through names and query texts, and the HTTP API fuzzed from its OpenAPI document (schemathesis).

One ``embedcluster run`` serves the module: PostgreSQL with the books and a table whose name and
columns are SQL injection attempts, the MySQL sink on a private MariaDB (its password inside the
DSN of the config file), the API key from ``EMBEDCLUSTER_API_KEY``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pymysql
import pytest
from psycopg import sql

from cluster.demo import BATCH_1, BOOKS_DDL
from cluster.pgserver import LocalPostgres
from tests.support.harness import REPO, CliProcess, RunningApp, free_port, wait_for, write_config
from tests.support.mariadb import MariaDBServer, table_name

pytestmark = pytest.mark.integration

API_KEY = "sec-" + "0123456789abcdef" * 2
WRONG_KEY = API_KEY[:-1] + ("0" if API_KEY[-1] != "0" else "1")  # same length, last character differs
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: no request of these tests may take longer (a hang fails the test)
REQUEST_TIMEOUT_S = 20.0

#: SQL injection attempts as PostgreSQL identifiers: a table and its columns
EVIL_TABLE = 'x"; DROP TABLE t; --'
EVIL_KEY = "id`; DROP TABLE t; --"
EVIL_TEXT = 'body"; DROP TABLE t; --'
EVIL_PAYLOAD = "a`b'c\"); DROP TABLE t; --"
#: the table's name as the config spells it (a part holding a quote is double-quoted, the quote doubled)
EVIL_QUALIFIED = 'public."' + EVIL_TABLE.replace('"', '""') + '"'
LIGHTHOUSE = "A lighthouse keeper alone on a stormy island keeps the lamp burning through the winter."


def request(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: status, headers (lower-case names), body.  Never raises for an HTTP error status."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def json_of(status_headers_body: tuple[int, dict[str, str], bytes]) -> Any:
    status, headers, body = status_headers_body
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:300])
    return json.loads(body)


# --- the running app ----------------------------------------------------------------------------

class Secured:
    """What the tests share: the app, its databases and the secrets that must never show."""

    def __init__(self, app: RunningApp, dsn: str, mariadb: MariaDBServer, sink_table: str):
        self.app = app
        self.base = app.base
        self.dsn = dsn
        self.mariadb = mariadb
        self.sink_table = sink_table

    def search(self, q: str, k: int = 5) -> dict[str, Any]:
        url = f"{self.base}/search?" + urllib.parse.urlencode({"q": q, "k": k})
        status, headers, body = request(url, AUTH)
        assert status == 200, body[:500]
        return json.loads(body)

    def pg_tables(self) -> set[str]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}

    def mysql_tables(self) -> set[str]:
        with self.mariadb.user_connection() as conn, conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            return {r[0] for r in cur.fetchall()}

    def assert_intact(self) -> None:
        """Nothing got dropped: the canaries, the books, the hostile table, the sink's tables."""
        assert {"t", "books", EVIL_TABLE} <= self.pg_tables()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
            assert conn.execute("SELECT count(*) FROM books").fetchone()[0] == len(BATCH_1)
        assert {"t", self.sink_table, f"{self.sink_table}_state"} <= self.mysql_tables()
        with self.mariadb.user_connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM t")
            assert cur.fetchone()[0] == 1


def _seed(dsn: str, mariadb: MariaDBServer) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(BOOKS_DDL)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO books (name, description, author, year) VALUES (%s, %s, %s, %s)", BATCH_1)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")  # the canary every injection attempt aims at
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute(sql.SQL("CREATE TABLE {} ({} int PRIMARY KEY, {} text, {} text)").format(
            sql.Identifier("public", EVIL_TABLE), sql.Identifier(EVIL_KEY), sql.Identifier(EVIL_TEXT),
            sql.Identifier(EVIL_PAYLOAD)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, %s)").format(sql.Identifier("public", EVIL_TABLE)),
                     (LIGHTHOUSE, "'; DROP TABLE t; -- `x`"))
    with mariadb.user_connection() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")
        cur.execute("INSERT IGNORE INTO t VALUES (1)")
        conn.commit()


@pytest.fixture(scope="module")
def secured(pg: LocalPostgres, mariadb: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    dsn = pg.create_database(f"sec_{uuid.uuid4().hex[:8]}")
    _seed(dsn, mariadb)
    tmp = tmp_path_factory.mktemp("security")
    port = free_port()
    sink_table = table_name("sec")
    # the password inside the DSN of the file: the case where a leak would be easiest
    sink_dsn = mariadb.dsn().replace(f"{mariadb.user}@", f"{mariadb.user}:{mariadb.password}@", 1)
    assert mariadb.password in sink_dsn
    tables = [
        {"name": "public.books", "text": "{description}", "payload": ["name", "description", "author", "year"]},
        {"name": EVIL_QUALIFIED, "text": "{" + EVIL_TEXT + "}", "payload": [EVIL_PAYLOAD]},
    ]
    config = write_config(tmp / "c.toml", dsn, port, {"kind": "mysql", "dsn": sink_dsn, "table": sink_table},
                          slot="sec", tables=tables)
    cli = CliProcess(["run", "--config", str(config)], tmp / "run.log", env={"EMBEDCLUSTER_API_KEY": API_KEY})
    app = RunningApp(cli, port)
    try:
        # healthy, or exited: a run that stops at start-up fails here at once, with its output
        wait_for(lambda: not cli.alive() or request(app.base + "/healthz")[0] == 200, 240, "GET /healthz to answer ok",
                 interval=0.5)
        assert cli.alive(), f"embedcluster run exited early:\n{cli.output()[-4000:]}"
        yield Secured(app, dsn, mariadb, sink_table)
    finally:
        cli.stop()
        output = cli.output()
        # nothing the run printed (its log, the actors' forwarded logs) carries a secret
        assert API_KEY not in output and mariadb.password not in output, "a secret reached the log"


# --- the API key --------------------------------------------------------------------------------

def test_api_key_over_http(secured: Secured) -> None:
    base = secured.base
    for path in ("/search?q=dune", "/stats", "/", "/openapi.json", "/no-such-route"):
        for headers, challenge in (({}, "Bearer"), ({"Authorization": f"Bearer {WRONG_KEY}"}, 'Bearer error="invalid_token"'),
                                   ({"Authorization": API_KEY}, 'Bearer error="invalid_token"')):
            status, response_headers, body = answer = request(base + path, headers)
            assert status == 401, (path, headers, body[:300])
            assert response_headers.get("www-authenticate") == challenge
            error = json_of(answer)
            assert set(error) == {"error"} and isinstance(error["error"], str)
            assert API_KEY not in body.decode()
    # the right key: every route answers
    results = secured.search("battle in space", k=3)["results"]
    assert results and results[0]["payload"]["name"] == "The War of the Worlds"
    assert json_of(request(base + "/stats", AUTH))["state"] == "streaming"
    status, headers, page = request(base + "/", AUTH)
    assert status == 200 and headers["content-type"].startswith("text/html") and b"embedcluster search" in page
    assert json_of(request(base + "/openapi.json", AUTH))["paths"]["/search"]
    # /healthz needs no key (probes), answers as before
    status, _, body = answer = request(base + "/healthz")
    assert status in (200, 503) and json_of(answer)["status"] in ("ok", "streaming", "starting", "backfilling")
    # a browser opening the page gets it with the 401: it asks for the key
    status, headers, page = request(base + "/", {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert status == 401 and headers["www-authenticate"] == "Bearer" and b'id="keyform"' in page
    assert "API key required" in secured.app.cli.output()  # the start-up says how the app is protected


def test_secrets_stay_out_of_stats_and_errors(secured: Secured) -> None:
    stats_body = request(secured.base + "/stats", AUTH)[2].decode()
    for shown in (stats_body, secured.app.cli.output()):
        assert API_KEY not in shown and secured.mariadb.password not in shown


def _cli(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, **(env or {})})


def _one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in result.stdout + result.stderr
    assert "started a local Ray" not in result.stdout + result.stderr  # refused before Ray
    return lines[0]


def test_non_loopback_host_without_key_exits_2(tmp_path: Path) -> None:
    dsn = "postgresql://postgres@127.0.0.1:1/none"  # never contacted: the refusal comes first
    config = write_config(tmp_path / "c.toml", dsn, free_port(), {"kind": "qdrant", "path": str(tmp_path / "q")})
    config.write_text(config.read_text().replace('host = "127.0.0.1"', 'host = "0.0.0.0"'))
    started = time.monotonic()
    line = _one_line_exit_2(_cli(config, {"EMBEDCLUSTER_API_KEY": ""}), "serve.api_key", "0.0.0.0",
                            "EMBEDCLUSTER_API_KEY", "serve.allow_unauthenticated = true")
    assert time.monotonic() - started < 60, line
    # with a key the same file passes the check (and then fails on the unreachable source, not on the host)
    keyed = _cli(config, {"EMBEDCLUSTER_API_KEY": API_KEY})
    assert keyed.returncode == 2 and "serve.api_key" not in keyed.stderr and "source.dsn" in keyed.stderr


# --- SQL injection through names ------------------------------------------------------------------

def test_hostile_table_and_column_names_are_quoted(secured: Secured) -> None:
    """The table and columns named like injections are replicated (backfill and stream) like any other."""
    hits = secured.search("lighthouse keeper on a stormy island", k=3)["results"]
    assert hits[0]["table"] == EVIL_QUALIFIED and hits[0]["id"] == 1
    assert hits[0]["payload"] == {EVIL_PAYLOAD: "'; DROP TABLE t; -- `x`"}
    with psycopg.connect(secured.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {} SET {} = %s, {} = %s WHERE {} = 1").format(
            sql.Identifier("public", EVIL_TABLE), sql.Identifier(EVIL_TEXT), sql.Identifier(EVIL_PAYLOAD),
            sql.Identifier(EVIL_KEY)), ("A submarine crew explores the ocean trench.", "`); DROP TABLE t; #"))

    def streamed() -> bool:
        top = secured.search("submarine under the ocean", k=1)["results"][0]
        return top["table"] == EVIL_QUALIFIED and top["payload"] == {EVIL_PAYLOAD: "`); DROP TABLE t; #"}

    wait_for(streamed, 60, "the update of the hostile table to be searchable")
    secured.assert_intact()


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        # MySQL sink table names with backticks and statements: refused, not quoted into SQL
        (lambda c: c.replace('table = "sec_cfg"', 'table = "x`; DROP TABLE t; -- "'), ["sink.table", "letters, digits"]),
        (lambda c: c.replace('table = "sec_cfg"', 'table = "t` (id int); DROP TABLE t; --"'), ["sink.table"]),
        # the replication slot and publication are created by name: refused
        (lambda c: c.replace('slot = "sec_cfg"', 'slot = "x\\"; DROP TABLE t; --"'), ["source.slot"]),
        (lambda c: c.replace('publication = "sec_cfg"', "publication = \"p'; DROP TABLE t; --\""),
         ["source.publication"]),
        # a source table name with an unbalanced quote: refused with how to spell it
        (lambda c: c.replace('name = "public.books"', 'name = "x\\"; DROP TABLE t; --"'),
         ["tables[0].name", "double-quote"]),
        # a well-formed but hostile name that does not exist: refused, naming it
        (lambda c: c.replace('name = "public.books"', 'name = "public.\\"books\\"\\"; DROP TABLE t; --\\""'),
         ["tables[0].name", "does not exist"]),
    ],
    ids=["mysql-table-backtick", "mysql-table-statement", "slot", "publication", "table-unbalanced", "table-missing"],
)
def test_hostile_names_are_refused_in_one_line(secured: Secured, tmp_path: Path, edit: Any, needles: list[str]) -> None:
    sink = {"kind": "mysql", "dsn": secured.mariadb.dsn(), "table": "sec_cfg"}
    config = write_config(tmp_path / "c.toml", secured.dsn, free_port(), sink, slot="sec_cfg")
    text = edit(config.read_text())
    assert text != config.read_text(), "the edit did not apply"
    config.write_text(text)
    result = _cli(config, {"EMBEDCLUSTER_SINK_PASSWORD": secured.mariadb.password})
    line = _one_line_exit_2(result, *needles)
    assert secured.mariadb.password not in line
    secured.assert_intact()
    assert "sec_cfg" not in secured.mysql_tables()


# --- SQL injection and garbage through the query text ----------------------------------------------

HOSTILE_QUERIES = [
    "'; DROP TABLE books; --",
    "\"; DROP TABLE t; --",
    "`t`; DROP TABLE `t`; -- ",
    "1' OR '1'='1",
    "') UNION SELECT password FROM mysql.user --",
    "\x00",
    "a\x00b\x00; DROP TABLE t",
    "%00%27",
    "\\'; DROP TABLE books; --\\",
    "<script>alert(1)</script>",
    "{description}{0}{__class__}",
    "\u202e\ufeff\U0001f680 emoji and bidi",
    "\ud7ff\ue000",
    "y " * 2_499 + "\U0001f680" * 2,  # just under the 5,000 characters accepted: embedded (truncated by the model)
    "\U0001f680" * 5_000,  # the longest accepted, of 4-byte characters: its URL still fits in 64 KiB
    "x" * 100_000,  # 100 KB
    "DROP TABLE books; " * 6000,  # ~108 KB of statements
]


#: the longest request target (path and query, in bytes) uvicorn, Ray Serve's HTTP server, reads;
#: a longer one it answers 400 itself (text/plain), before the app sees the request
MAX_TARGET_BYTES = 65_535


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _assert_search_answer(answer: tuple[int, dict[str, str], bytes], q: str, what: str) -> int:
    status, _, body = answer
    assert status in (200, 400), (what, status, body[:300])
    out = json_of(answer)
    if status == 200:
        assert out["query"] == q.strip() and isinstance(out["results"], list), what
    else:
        assert set(out) == {"error"}, what
    return status


def test_hostile_query_texts_fail_harmlessly(secured: Secured) -> None:
    statuses = []
    for q in HOSTILE_QUERIES:
        for k in ("5", "100", "1; DROP TABLE t", "-1", "1e3", "\uff10"):
            url = f"{secured.base}/search?" + urllib.parse.urlencode({"q": q, "k": k})
            if len(url) - len(secured.base) > MAX_TARGET_BYTES:
                # the HTTP server refuses the request line before the app sees it: 400 (its own text), no 5xx
                assert request(url, AUTH)[0] == 400, len(url)
            else:
                statuses.append(_assert_search_answer(request(url, AUTH), q, f"GET {q[:40]!r} k={k!r}"))
        for k_json in (5, 100, "1; DROP TABLE t", -1, 1e3, True, None, [5], {"$ne": 1}):
            body = json.dumps({"q": q, "k": k_json}).encode()
            statuses.append(_assert_search_answer(post(secured.base + "/search", body, AUTH), q,
                                                  f"POST {q[:40]!r} k={k_json!r}"))
    # raw bodies that are no JSON object at all
    for raw in (b"'; DROP TABLE books; --", b"\x00" * 64, b"`t`", b'{"q": "x"' , b'{"q": "\\ud800"}', b"[" * 50_000,
                b'{"q": {"$gt": ""}}', b'{"q": ["a", "b"]}'):
        status, _, _ = answer = post(secured.base + "/search", raw, AUTH)
        assert status == 400 and set(json_of(answer)) == {"error"}, (raw[:40], answer)
    status, _, _ = answer = post(secured.base + "/search", b'{"q": "' + b"x" * 300_000 + b'"}', AUTH)
    assert status == 413 and set(json_of(answer)) == {"error"}
    assert 200 in statuses and 400 in statuses
    secured.assert_intact()
    # the store still answers, with everything in it
    assert secured.search("battle in space", k=1)["results"][0]["payload"]["name"] == "The War of the Worlds"
    with pymysql.connect(unix_socket=str(secured.mariadb.socket_path), user="root", password="",
                         database="vectors") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM `{secured.sink_table}`")
        assert cur.fetchone()[0] == len(BATCH_1) + 1


# --- fuzzing the API from its OpenAPI document -----------------------------------------------------

#: examples per operation and generation mode: bounded so the test takes seconds, not minutes
FUZZ_EXAMPLES = 40


def test_http_api_fuzzed_from_openapi(secured: Secured) -> None:
    """schemathesis generates valid and invalid requests from /openapi.json: no 5xx, no hang, errors JSON."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(secured.base + "/openapi.json", headers=AUTH, timeout=REQUEST_TIMEOUT_S)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("GET", "/search"), ("POST", "/search"), ("GET", "/healthz"), ("GET", "/stats"), ("GET", "/metrics"),
        ("GET", "/")}
    statuses: dict[str, set[int]] = {}
    sent = [0]

    def check(case: Any, headers: dict[str, str]) -> None:
        started = time.monotonic()
        response = case.call(base_url=secured.base, headers=headers, timeout=REQUEST_TIMEOUT_S)
        elapsed = time.monotonic() - started
        sent[0] += 1
        what = f"{case.method} {case.formatted_path} {case.query!r:.200} {case.body!r:.200} -> {response.status_code}"
        statuses.setdefault(case.path, set()).add(response.status_code)
        if len(response.request.url) - len(secured.base) > MAX_TARGET_BYTES:
            # negative examples may be longer than any URL the HTTP server reads: it refuses them itself
            assert response.status_code == 400, what
            return
        assert response.status_code < 500, f"{what}: {response.text[:300]}"
        assert elapsed < REQUEST_TIMEOUT_S, what
        content_type = response.headers.get("content-type") or [""]  # schemathesis: each header's values
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        if response.status_code >= 400 or case.path not in ("/", "/metrics"):  # the page and Prometheus text
            assert content_type.startswith("application/json"), f"{what}: {content_type}"
            body = response.json()
            if response.status_code >= 400 and case.path != "/healthz":
                assert set(body) == {"error"} and isinstance(body["error"], str), f"{what}: {body}"
        else:
            assert content_type.startswith("text/plain" if case.path == "/metrics" else "text/html"), what

    fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not (op.query or op.body):
                continue  # nothing to make invalid
            for headers in (AUTH, {}):
                @fuzz
                @given(case=op.as_strategy(generation_mode=mode))
                def run(case: Any) -> None:
                    check(case, headers)

                run()
    assert {200, 400} <= statuses["/search"] and 401 in statuses["/stats"], statuses
    assert sent[0] >= 4 * FUZZ_EXAMPLES, sent  # the searches alone: 2 methods x 2 modes x 2 header sets
    secured.assert_intact()
