"""The pipeline on a Ray cluster of three nodes (``ray start``), and the loss of a node mid-stream.

Ray adds nodes only when it may use a non-loopback address, and this machine must send nothing
beyond loopback, so the cluster runs in a network namespace of this test's own that has only its
loopback (``../shared/ENVIRONMENT.md``).  The test's thread enters it (``setns``), so PostgreSQL,
the Ray nodes, ``embedcluster run`` and every HTTP request of the test live there; it leaves
afterwards, and every process still in the namespace is killed with it.

The cluster: a head that declares ``embedcluster_control`` (where ``[ray] control_resources``
sends the reader, the writer and the coordinator), worker A with ``--num-gpus 1`` and
``embedcluster_gpu`` (the embedding actor asks for both: ``device = "auto"`` asks for a GPU when
the cluster has one, and the model still runs on the CPU, since torch sees none), and worker B
with neither.  Losing a node: A's raylet is killed while rows stream in (its actors die with it);
a node of the same kind then joins, as an autoscaler would start one, and the pipeline carries on
by itself: every row in the table is in the index, and ``verify`` finds no difference.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from cluster.demo import BATCH_1, BATCH_2, BOOKS_DDL
from tests.support.harness import (
    REPO,
    CliProcess,
    RunningApp,
    _descendants,
    free_port,
    private_postgres,
    ray_actor_pids,
    wait_caught_up,
    wait_for,
    write_config,
)

CLONE_NEWNET = 0x40000000
RAY = str(Path(sys.executable).parent / "ray")

# sessions and CI run as root (make install brings iproute2): elsewhere a namespace cannot be made
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace of its own (ip netns)")


@contextlib.contextmanager
def own_network(name: str) -> Iterator[None]:
    """This thread (and what it starts) in a new network namespace with only a loopback."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {name}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's network")
    finally:
        os.close(home)
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:  # whatever is left (Ray's daemons, a stuck run): gone with the namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=False)


class RayCluster:
    """Ray nodes started with ``ray start`` on this namespace's loopback."""

    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # without the loopback-only switch (it refuses added nodes) and with Ray's token auth off:
        # the namespace has nothing but its loopback
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        self.env["RAY_AUTH_MODE"] = "disabled"
        self._nodes = itertools.count(1)

    def _start(self, *args: str) -> None:
        done = subprocess.run([RAY, "start", "--disable-usage-stats", *args], env=self.env, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def head(self, resources: dict[str, float], cpus: int) -> None:
        self._start("--head", f"--port={self.port}", f"--num-cpus={cpus}", "--include-dashboard=false",
                    f"--temp-dir={self.temp_dir}", f"--resources={json.dumps(resources)}")

    def worker(self, resources: dict[str, float], cpus: int, gpus: int = 0) -> None:
        # a directory of its own, as on another machine: nodes sharing one would each stream every
        # node's worker logs to the driver
        self._start(f"--address={self.address}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                    f"--resources={json.dumps(resources)}", f"--temp-dir={self.temp_dir}-{next(self._nodes)}")

    def alive_nodes(self) -> int:
        done = subprocess.run([sys.executable, "-c", _ALIVE_NODES, self.address], env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.strip().splitlines()[-1])


# a driver of its own: the test process never joins the cluster (its Ray state would outlive the test)
_ALIVE_NODES = "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); " \
               "print(sum(1 for n in ray.nodes() if n['Alive']))"


def raylet_of(resource: str) -> int:
    """The pid of the raylet whose node declares ``resource`` (its static resource list names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"raylet") and any(a.startswith(b"--static_resource_list=")
                                                          and resource.encode() in a for a in cmd):
                found.append(int(entry.name))
    assert len(found) == 1, f"raylets declaring {resource}: {found}"
    return found[0]


def _insert(dsn: str, rows: list[tuple[str, str, str, int]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO books (name, description, author, year) VALUES (%s, %s, %s, %s)", rows)


def _verify(config: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "verify", "--config", str(config), "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def test_a_three_node_cluster_places_actors_by_resources_and_survives_losing_the_gpu_node(tmp_path: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="ecmn-"))  # short: Ray's socket paths live under it
    try:
        with own_network(f"ecmn{os.getpid()}"), private_postgres() as pg:
            dsn = pg.create_database("books")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(BOOKS_DDL)
            _insert(dsn, BATCH_1)
            cluster = RayCluster(work / "ray")
            cluster.head({"embedcluster_control": 1}, cpus=1)
            cluster.worker({"embedcluster_gpu": 1, "node_a": 1}, cpus=2, gpus=1)
            cluster.worker({"node_b": 1}, cpus=2)
            assert cluster.alive_nodes() == 3

            port = free_port()
            config = write_config(
                tmp_path / "embedcluster.toml", dsn, port, {"kind": "qdrant", "collection": "books",
                                                           "path": str(tmp_path / "qdrant")},
                extra="\n".join([
                    "[ray]", f'address = "{cluster.address}"', "control_resources = {embedcluster_control = 0.01}",
                ]),
            )
            text = config.read_text().replace('batch_size = 64\n', 'batch_size = 64\nresources = {embedcluster_gpu = 1}\n')
            config.write_text(text)
            app = RunningApp(CliProcess(["run", "--config", str(config)], tmp_path / "run.log"), port)
            try:
                app.wait_healthy(timeout=300)
                wait_caught_up(dsn, "embedcluster", timeout=120)
                assert app.stats()["rows_applied"] >= len(BATCH_1)

                # placed by resources: the embedder under A's raylet, reader/writer/coordinator under the head's
                node_a, head = raylet_of("node_a"), raylet_of("embedcluster_control")
                on_a, on_head = _descendants(node_a), _descendants(head)
                embedders = ray_actor_pids("EmbeddingActor")
                assert embedders and all(p in on_a for p in embedders), (embedders, sorted(on_a))
                assert "2 model worker(s)" in app.cli.output()  # threads from its node's 2 cores, not the cluster's 5
                for actor in ("WriterActor", "CdcReaderActor", "PipelineActor"):
                    pids = ray_actor_pids(actor)
                    assert pids and all(p in on_head for p in pids), (actor, pids)
                hit = app.search("a desert planet", k=3)["results"]
                assert hit and hit[0]["payload"]["name"] == "Dune"

                # lose A mid-stream: rows keep coming while its raylet (and its actors) die
                extra = [(f"Chronicle {i}", f"Volume {i} of a long chronicle about ships, storms and harbour towns.",
                          "Anonymous", 1900 + i % 100) for i in range(300)]
                _insert(dsn, BATCH_2)
                for i in range(0, 150, 30):
                    _insert(dsn, extra[i : i + 30])
                os.kill(node_a, signal.SIGKILL)
                for i in range(150, 300, 30):
                    _insert(dsn, extra[i : i + 30])
                wait_for(lambda: cluster.alive_nodes() == 2, 120, "Ray to find node A gone")
                # a node of the same kind joins (what an autoscaler does for a lost GPU node)
                cluster.worker({"embedcluster_gpu": 1, "node_a2": 1}, cpus=2, gpus=1)
                wait_caught_up(dsn, "embedcluster", timeout=300)
                restarted = ray_actor_pids("EmbeddingActor")
                assert restarted and all(p in _descendants(raylet_of("node_a2")) for p in restarted)
                assert app.cli.alive(), app.cli.output()[-3000:]
                code, report = _verify(config)
                assert code == 0 and (report["missing"], report["stale"], report["orphans"]) == (0, 0, 0), report
                with psycopg.connect(dsn) as conn:
                    rows = conn.execute("SELECT count(*) FROM books").fetchone()[0]
                assert rows == len(BATCH_1) + len(BATCH_2) + 300 and app.stats()["rows_applied"] >= rows
            finally:
                app.cli.stop(signal.SIGINT, timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)
