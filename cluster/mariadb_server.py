"""A private, throwaway MariaDB server for tests and benchmarks.

:class:`MariaDBServer` initialises a fresh data directory with
``mariadb-install-db``, starts ``mariadbd`` on a free loopback port and a
private socket, waits (with a deadline) until it accepts connections, creates a
database and a password-protected user, and shuts everything down again.
Nothing outside its temporary directory is touched, and it never listens on
anything but 127.0.0.1.

Beside :mod:`cluster.pgserver` (the demo's PostgreSQL): ``embedcluster bench
writer`` starts one, and the tests' own helper (``tests.support.mariadb``)
builds on it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pymysql

from cluster.loopback import free_port

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install -y mariadb-server-core mariadb-client-core"

# Debian installs mariadbd in /usr/sbin, which is often not on a non-root PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin"])


class MariaDBUnavailable(RuntimeError):
    """The MariaDB server binaries are not installed."""


def find_binary(*names: str) -> str:
    """Absolute path of the first of ``names`` found, else :class:`MariaDBUnavailable`."""
    for name in names:
        path = shutil.which(name, path=_SEARCH_PATH)
        if path:
            return path
    raise MariaDBUnavailable(
        f"MariaDB server binaries not found (looked for {', '.join(names)}); install them with: {INSTALL_HINT}"
    )


class MariaDBServer:
    """A private ``mariadbd`` on 127.0.0.1, usable as a context manager.

    ``dsn(db)`` gives ``mysql://user@127.0.0.1:PORT/db`` (no password in it);
    the password is in :attr:`password`.  :meth:`root_connection` opens an
    administrative connection over the private socket.
    """

    def __init__(
        self,
        database: str = "vectors",
        user: str = "embedcluster",
        password: str | None = None,
        startup_timeout_s: float = 60.0,
        extra_args: list[str] | None = None,
        keep_datadir: bool = False,
    ) -> None:
        self.database = database
        self.user = user
        self.password = password if password is not None else secrets.token_urlsafe(18)
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args or [])
        self.keep_datadir = keep_datadir
        self.port: int = 0
        self.version: str = ""
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # ------------------------------------------------------------------ paths
    @property
    def base_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("server not started")
        return self._dir

    @property
    def datadir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_path(self) -> Path:
        return self.base_dir / "mariadbd.sock"

    @property
    def error_log(self) -> Path:
        return self.base_dir / "mariadbd.log"

    # -------------------------------------------------------------- lifecycle
    def start(self) -> "MariaDBServer":
        """Initialise a data directory, start the server and create db + user."""
        if self._proc is not None:
            return self
        mariadbd = find_binary("mariadbd", "mysqld")
        install_db = find_binary("mariadb-install-db", "mysql_install_db")
        # Short prefix: the unix socket path must stay under ~107 bytes.
        self._dir = Path(tempfile.mkdtemp(prefix="ecmdb-"))
        self.datadir.mkdir()
        self._install(install_db)
        last_error: Exception | None = None
        for _ in range(3):  # a port race with another process is retried
            self.port = free_port()
            try:
                self._launch(mariadbd)
                break
            except _PortInUse as exc:
                last_error = exc
        else:
            self._cleanup_dir()
            raise RuntimeError(f"mariadbd could not bind a free port: {last_error}")
        try:
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        log.info("private MariaDB %s listening on 127.0.0.1:%d (datadir %s)", self.version, self.port, self.datadir)
        return self

    def _install(self, install_db: str) -> None:
        cmd = [
            install_db,
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--user=root" if os.geteuid() == 0 else f"--user={_current_user()}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=self.startup_timeout_s)
        if result.returncode != 0:
            self._cleanup_dir()
            tail = (result.stdout + result.stderr)[-2000:]
            raise RuntimeError(f"mariadb-install-db failed (exit {result.returncode}):\n{tail}")

    def _launch(self, mariadbd: str) -> None:
        cmd = [
            mariadbd,
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--user=root" if os.geteuid() == 0 else f"--user={_current_user()}",
            "--bind-address=127.0.0.1",
            f"--port={self.port}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.base_dir / 'mariadbd.pid'}",
            f"--log-error={self.error_log}",
            "--skip-name-resolve",
            *self.extra_args,
        ]
        if self.error_log.exists():
            self.error_log.unlink()
        self._log_file = open(self.base_dir / "mariadbd.out", "ab")
        self._proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        poll = 0.02
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                log_tail = self._log_tail()
                if "Address already in use" in log_tail or "Can't start server: Bind" in log_tail:
                    raise _PortInUse(log_tail[-500:])
                self._cleanup_dir()
                raise RuntimeError(f"mariadbd exited with code {code} during startup:\n{log_tail}")
            try:
                conn = self.root_connection(connect_timeout=2)
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    tail = self._log_tail()
                    self.stop()
                    raise RuntimeError(
                        f"mariadbd did not accept connections within {self.startup_timeout_s:.0f}s:\n{tail}"
                    ) from None
                # Poll the socket with a growing interval until the deadline.
                time.sleep(poll)
                poll = min(poll * 1.5, 0.25)
                continue
            conn.close()
            return

    def _bootstrap(self) -> None:
        with self.root_connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            self.version = str(cur.fetchone()[0])
            self.create_database(self.database, cur=cur)
            for host in ("127.0.0.1", "localhost"):
                cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (self.user, host, self.password))
            conn.commit()

    def create_database(self, name: str, cur: Any = None) -> None:
        """Create database ``name`` (if missing) and grant the user all rights on it."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r} must be letters, digits and '_'")
        if cur is None:
            with self.root_connection() as conn, conn.cursor() as c:
                self.create_database(name, cur=c)
                conn.commit()
            return
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        for host in ("127.0.0.1", "localhost"):
            cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (self.user, host, self.password))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO %s@%s", (self.user, host))

    def stop(self, timeout_s: float = 30.0) -> None:
        """Shut the server down (SIGTERM, then SIGKILL after ``timeout_s``) and remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # mariadbd shuts down cleanly on SIGTERM
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("mariadbd (pid %d) did not stop within %.0fs; killing it", proc.pid, timeout_s)
                proc.kill()
                proc.wait(timeout=timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._cleanup_dir()

    def halt(self, timeout_s: float = 30.0) -> None:
        """Stop the server but keep its data and port (an outage; :meth:`relaunch` ends it)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def relaunch(self) -> "MariaDBServer":
        """Start the halted server again, same data directory and port."""
        if self._proc is None:
            self._launch(find_binary("mariadbd", "mysqld"))
        return self

    def _cleanup_dir(self) -> None:
        if self._dir is not None and not self.keep_datadir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "MariaDBServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ connecting
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def dsn(self, db: str | None = None) -> str:
        """``mysql://user@127.0.0.1:PORT/db`` -- the password is *not* included."""
        return f"mysql://{self.user}@127.0.0.1:{self.port}/{db or self.database}"

    def root_connection(self, connect_timeout: int = 10, database: str | None = None) -> pymysql.Connection:
        """Administrative connection as root over the private socket."""
        return pymysql.connect(
            unix_socket=str(self.socket_path),
            user="root",
            password="",
            database=database,
            connect_timeout=connect_timeout,
            charset="utf8mb4",
        )

    def user_connection(self, database: str | None = None) -> pymysql.Connection:
        """Connection as the unprivileged user over TCP (what a sink sees)."""
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            database=database or self.database,
            charset="utf8mb4",
        )

    def _log_tail(self, n: int = 4000) -> str:
        chunks = []
        for path in (self.error_log, self.base_dir / "mariadbd.out"):
            try:
                chunks.append(path.read_text(errors="replace")[-n:])
            except OSError:
                pass
        return "\n".join(chunks)[-n:]


class _PortInUse(RuntimeError):
    pass


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
