"""A private PostgreSQL server for the demo and the tests.

``initdb`` into a directory, ``wal_level=logical``, listening on 127.0.0.1
only (no Unix socket), on a free port.  PostgreSQL refuses to run as root, so
as root the server runs as the ``postgres`` system user (or ``nobody``).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cluster.loopback import free_port

log = logging.getLogger(__name__)

PG_BIN_CANDIDATES = [
    os.environ.get("EMBEDCLUSTER_PG_BIN", ""),
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/14/bin",
]


class PostgresNotFound(RuntimeError):
    pass


def find_pg_bin() -> Path:
    for candidate in PG_BIN_CANDIDATES:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresNotFound(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install them "
        "(apt-get install -y postgresql) or set EMBEDCLUSTER_PG_BIN to their directory"
    )


def _run_as() -> str | None:
    """The unprivileged user to run PostgreSQL as when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user exists to run PostgreSQL as")


class LocalPostgres:
    """Start/stop a throwaway PostgreSQL cluster in ``data_dir``."""

    def __init__(self, data_dir: str | Path, port: int | None = None, user: str = "postgres") -> None:
        self.port = port or free_port()
        self.user = user  # database superuser name
        self.bin = find_pg_bin()
        self.os_user = _run_as()
        self.data_dir = self._reachable(Path(data_dir).resolve())
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"

    def _reachable(self, wanted: Path) -> Path:
        """``wanted``, or a stable stand-in under /tmp if the server user cannot reach it.

        As root the server runs as an unprivileged user, which cannot enter a
        0700 directory such as /root or a fresh temp dir.  Rather than loosen
        the permissions of someone's home, the data goes to a directory named
        after ``wanted`` (so a later run finds it again).
        """
        if not self.os_user:
            return wanted
        existing = wanted
        while not existing.exists():
            existing = existing.parent
        # directories we create below `existing` are 0755, so it is the one to test
        probe = subprocess.run(["runuser", "-u", self.os_user, "--", "test", "-x", str(existing)],
                               check=False, capture_output=True)
        if probe.returncode == 0:
            return wanted
        import hashlib

        digest = hashlib.sha1(str(wanted).encode()).hexdigest()[:12]
        fallback = Path(tempfile.gettempdir()) / f"embedcluster-pg-{digest}" / wanted.name
        log.info("%s is not reachable by user %s; keeping PostgreSQL data in %s", wanted, self.os_user, fallback)
        return fallback

    def _cmd(self, *args: str) -> list[str]:
        if self.os_user:
            return ["runuser", "-u", self.os_user, "--", *args]
        return list(args)

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
            self.log_file.touch()
            os.chown(self.log_file, pw.pw_uid, pw.pw_gid)
        os.chmod(self.data_dir, 0o700)
        subprocess.run(
            self._cmd(str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                      "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C"),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def start(self, wal_level: str = "logical", timeout: float = 60.0) -> None:
        if not self.initialized:
            self.init()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' "
            f"-c wal_level={wal_level} -c max_replication_slots=20 -c max_wal_senders=20 "
            "-c fsync=on -c shared_buffers=64MB"
        )
        subprocess.run(
            self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                      "-o", opts, "-w", "-t", str(int(timeout)), "start"),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._wait_ready(timeout)
        log.info("PostgreSQL running on 127.0.0.1:%d (data %s)", self.port, self.data_dir)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not accept connections within {timeout:.0f}s; see {self.log_file}")
                time.sleep(0.1)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self, mode: str = "fast") -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        subprocess.run(
            self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"),
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> "LocalPostgres":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _has_c_utf8() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout.lower()
    except FileNotFoundError:
        return False
    return "c.utf8" in out or "c.utf-8" in out
