"""Private Redis servers for the benchmark: one standalone node, or a three-master cluster.

The scale rows (``benchmarks/run.py``) compare Redis Cluster with a single Redis, and count the
Redis commands a publish costs. Both sides run on servers of their own, started here from the
same ``redis-server`` with the same settings (no persistence, loopback only), so that neither
side shares its Redis with anything else on the machine and the command counts are the
benchmark's alone. Each server is stopped by its PID and its directory removed.

A cluster's nodes listen on free loopback ports below 55536, since a node also takes the port
10000 above its own for the cluster bus.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: The commands the benchmark itself sends to read the counts, never counted.
OWN_COMMANDS: Final = frozenset({"info", "ping", "cluster", "config", "hello", "client"})


def redis_server() -> str | None:
    """The ``redis-server`` binary, if the machine has one (and ``redis-cli`` with it)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return server if server and cli else None


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def node_ports(count: int, *, bus: bool) -> list[int]:
    """``count`` free loopback ports below 55536 (and their bus ports, ``bus``)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port in ports or (bus and (port >= 55536 or not _bindable(port + 10000))):
            continue
        ports.append(port)
    return ports


@dataclass
class Nodes:
    """Running Redis servers: a standalone one, or the masters of a cluster."""

    ports: list[int]
    cluster: bool
    processes: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        """The URL a client starts from (any node of a cluster)."""
        return f"redis://127.0.0.1:{self.ports[0]}" + ("" if self.cluster else "/0")

    def cli(self, port: int, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    def command_calls(self) -> Counter[str]:
        """Calls of every command so far, summed over the nodes (``INFO commandstats``)."""
        calls: Counter[str] = Counter()
        for port in self.ports:
            for line in self.cli(port, "info", "commandstats").splitlines():
                if not line.startswith("cmdstat_"):
                    continue
                name, _, stats = line.removeprefix("cmdstat_").partition(":")
                fields = dict(item.split("=", 1) for item in stats.split(","))
                name = name.lower()
                if name.split("|", 1)[0] not in OWN_COMMANDS:
                    calls[name] += int(fields["calls"])
        return calls


def _start(server: str, directory: Path, port: int, cluster: bool) -> subprocess.Popen[bytes]:
    command = [
        server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--daemonize", "no",
    ]  # fmt: skip
    if cluster:
        command += [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
        ]  # fmt: skip
    log = (directory / f"redis-{port}.log").open("wb")
    with log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def redis_nodes(*, cluster: bool, masters: int = 3, timeout: float = 30.0) -> Iterator[Nodes]:
    """Start a standalone Redis, or a cluster of ``masters`` masters (no replicas); stop them.

    Raises:
        RuntimeError: ``redis-server`` is not installed, or the servers did not come up.
    """
    server = redis_server()
    if server is None:
        raise RuntimeError("no redis-server (and redis-cli) on PATH")
    directory = Path(tempfile.mkdtemp(prefix="channel-asgi-bench-redis-"))
    ports = node_ports(masters if cluster else 1, bus=cluster)
    processes = [_start(server, directory, port, cluster) for port in ports]
    nodes = Nodes(ports, cluster, processes)
    try:
        deadline = time.monotonic() + timeout
        for port, process in zip(ports, processes, strict=True):
            while True:
                if process.poll() is not None:
                    log = (directory / f"redis-{port}.log").read_text(errors="replace")
                    raise RuntimeError(f"redis-server on port {port} exited: {log[-500:]}")
                with contextlib.suppress(subprocess.CalledProcessError):
                    if nodes.cli(port, "ping").strip() == "PONG":
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not answer")
                time.sleep(0.05)
        if cluster:
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            for port in ports:
                while "cluster_state:ok" not in nodes.cli(port, "cluster", "info"):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node {port} never reached cluster_state:ok")
                    time.sleep(0.1)
        yield nodes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            _reap(process)
        shutil.rmtree(directory, ignore_errors=True)
