"""Helpers for integration tests: run the real CLI, wait with deadlines, inspect sockets."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg

from cluster.loopback import free_port  # noqa: F401 - the tests import it from here

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def private_postgres(wal_level: str = "logical") -> Iterator[Any]:
    """A throwaway PostgreSQL on 127.0.0.1, removed afterwards."""
    from cluster.pgserver import LocalPostgres

    root = Path(tempfile.mkdtemp(prefix="ec-pg-"))
    server = LocalPostgres(root / "data")
    server.start(wal_level=wal_level)
    try:
        yield server
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)  # where root was not reachable


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def http_get(url: str, timeout: float = 10.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode(errors="replace")


def current_lsn(dsn: str) -> int:
    """The server's WAL insert position right now (after the caller's commits)."""
    from actors.changes import parse_lsn

    with psycopg.connect(dsn, autocommit=True) as conn:
        return parse_lsn(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])


def confirmed_lsn(dsn: str, slot: str) -> int:
    from actors.changes import parse_lsn

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    return parse_lsn(row[0]) if row and row[0] else 0


def wait_caught_up(dsn: str, slot: str, timeout: float = 60.0) -> None:
    """Wait until the slot confirms everything committed so far (all changes written)."""
    target = current_lsn(dsn)
    wait_for(lambda: confirmed_lsn(dsn, slot) >= target, timeout, f"slot {slot} to confirm {target:X}")


def write_config(path: Path, dsn: str, port: int, sink: dict[str, Any], slot: str = "embedcluster",
                 tables: list[dict[str, Any]] | None = None, extra: str = "", model: str = "default") -> Path:
    """An ``embedcluster`` config for the tests.  ``model = "null"`` (vectors from a hash of the text,
    no model to load: about 9 s less per ``run`` start and 4 s per ``verify --repair`` here) for
    tests whose assertions never depend on what the vectors mean; searches that rank need "default"."""
    tables = tables or [{"name": "public.books", "text": "{description}",
                         "payload": ["name", "description", "author", "year"], "filterable": ["year", "author"]}]
    lines = ["[source]", f'dsn = "{dsn}"', f'slot = "{slot}"', f'publication = "{slot}"', ""]
    for t in tables:
        # JSON strings are TOML basic strings: names with quotes, spaces or accents survive
        lines += ["[[tables]]", f'name = {json.dumps(t["name"])}', f'text = {json.dumps(t["text"])}',
                  "payload = " + json.dumps(t["payload"])]
        if t.get("filterable"):
            lines.append("filterable = " + json.dumps(t["filterable"]))
        lines.append("")
    lines += ["[embedding]", f"model = {json.dumps(model)}", "actors = 1", 'device = "auto"', "batch_size = 64", ""]
    lines += ["[sink]"] + [f"{k} = {json.dumps(v)}" for k, v in sink.items()] + [""]
    lines += ["[serve]", 'host = "127.0.0.1"', f"port = {port}", "", extra]
    path.write_text("\n".join(lines))
    return path


class CliProcess:
    """``embedcluster ...`` as a real subprocess, output captured to a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or REPO,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        if self.alive():
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill_group(self) -> None:
        """SIGKILL the CLI and everything it started (a crash of the whole node)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self._log.close()


class RunningApp:
    """An ``embedcluster run`` (or ``demo``) with its HTTP base URL."""

    def __init__(self, cli: CliProcess, port: int):
        self.cli = cli
        self.base = f"http://127.0.0.1:{port}"

    def wait_healthy(self, timeout: float = 240.0) -> None:
        exited: list[str] = []

        def healthy() -> bool:
            if not self.cli.alive():
                exited.append(self.cli.output()[-4000:])
                return True  # stop waiting: a run that exited never gets healthy
            status, body = http_get(self.base + "/healthz", timeout=5)
            return status == 200 and body == {"status": "ok"}

        wait_for(healthy, timeout, "GET /healthz to answer ok", interval=0.5)
        if exited:
            raise AssertionError(f"embedcluster exited early:\n{exited[0]}")

    def search(self, q: str, k: int = 5) -> dict[str, Any]:
        status, body = http_get(f"{self.base}/search?" + urllib.parse.urlencode({"q": q, "k": k}))
        assert status == 200, body
        return body

    def search_with(self, params: dict[str, Any]) -> dict[str, Any]:
        """``GET /search`` with these query parameters (200 expected)."""
        status, body = http_get(f"{self.base}/search?" + urllib.parse.urlencode(params))
        assert status == 200, body
        return body

    def post_search(self, body: dict[str, Any]) -> tuple[int, Any]:
        """``POST /search`` with ``body`` as JSON: (status, decoded answer)."""
        request = urllib.request.Request(f"{self.base}/search", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stats(self) -> dict[str, Any]:
        status, body = http_get(self.base + "/stats")
        assert status == 200, body
        return body


def start_run(config: Path, port: int, log_path: Path) -> RunningApp:
    app = RunningApp(CliProcess(["run", "--config", str(config)], log_path), port)
    app.wait_healthy()
    return app


def ray_actor_pids(name: str) -> list[int]:
    """Pids of the Ray worker processes running actor class ``name`` (their title is ``ray::<name>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(f"ray::{name}".encode()):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


# --- sockets -------------------------------------------------------------------

def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(children.get(p, []))
    return out


def listening_addresses(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state owned by ``pids``."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inode_pid[target[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state != "0A" or inode not in inode_pid:
                continue
            addr_hex, port_hex = local.split(":")
            out.append((_decode_addr(addr_hex, width), int(port_hex, 16), inode_pid[inode]))
    return out


def _decode_addr(hex_addr: str, width: int) -> str:
    raw = bytes.fromhex(hex_addr)
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def non_loopback_listeners(root_pids: list[int]) -> list[tuple[str, int, int]]:
    pids: set[int] = set()
    for pid in root_pids:
        pids |= _descendants(pid)
    return [a for a in listening_addresses(pids) if not (a[0].startswith("127.") or a[0] in ("::1", "::ffff:127.0.0.1"))]


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
