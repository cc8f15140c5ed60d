"""The fan-out benchmark: channel_asgi against sse-starlette + broadcaster, in one run.

Every server runs under uvicorn (uvloop, httptools, one worker, no access log) pinned to CPU 0;
the load client (``loadgen.c``, built here with the system C compiler) runs pinned to CPU 1, so
the client is never the bottleneck (its own CPU time is reported next to the server's).

Scenarios, for each server:

* **saturated fan-out** at 100, 1000 and 5000 subscribers on one channel: ~200-byte broadcasts
  published as fast as the server delivers them (at most ``--window`` broadcasts in flight);
  deliveries per second, server CPU seconds per 100k deliveries, lost and duplicate deliveries;
* **latency** at 1000 subscribers and 20 publishes per second: p50 / p99 end to end (the send
  time travels inside each message) and server CPU per 100k deliveries at that light load;
* **idle connections**: server RSS growth per idle subscriber at 5000 subscribers, and the time
  to connect 1000, 2000 and 5000 subscribers (it must grow linearly);
* **publish only**: publishes per server CPU second with no subscriber (channel_asgi checks the
  token, validates the body and appends to history; the baseline publishes the body as is), in
  ``--publish-rounds`` short rounds that load both servers at the same time (they share the
  server CPU, each with its own load client); the ratio is the median of the rounds' ratios, and
  their range is shown. Each server's publishes/s alone are shown too;
* **RedisStorage**: channel_asgi's saturated fan-out at 1000 subscribers on Redis, against the
  memory storage, alternating ``--redis-rounds`` times (the median of the paired ratios);
* **the number check** (SPEC 6.1): channel_asgi against itself with the check switched off
  (``benchmarks/unchecked.py``), in the publish-only rounds (loaded together) and in saturated
  fan-out at 1000 subscribers, alternating ``--check-rounds`` times;
* **metrics** (SPEC 6.4): channel_asgi with ``--metrics`` against itself without, in saturated
  fan-out at 1000 subscribers and in the light-load runs (CPU per delivery), alternating
  ``--check-rounds`` times;
* **servers**: channel_asgi on uvicorn, hypercorn, granian and daphne (memory storage), and on
  uvicorn and gunicorn with two uvicorn workers (RedisStorage), paced at ``--servers-rate``
  publishes per second to ``--servers-subs`` subscribers: server CPU per delivery (every process
  of the server, its workers included) against uvicorn on the same storage, in ``--servers-rounds``
  alternating rounds (the median of the paired ratios). ``--servers-only`` runs just these;
* **the mount and the direct write**: the same ChannelApp on the same uvicorn, bare and mounted
  in FastAPI (``benchmarks/mounts_app.py``), each with its direct write and without it (when the
  code has one), at ``--mounts-subs`` subscribers: server CPU per delivery and p50 / p99 at
  ``--rate`` broadcasts/s, and saturated deliveries/s, in ``--mounts-rounds`` rounds that run
  every variant in turn (the median of the paired ratios). ``--mounts-ref REF`` adds the same
  variants of channel_asgi as of git ``REF`` (e.g. the last commit with the direct write) to the
  same rounds; ``--mounts-only`` runs just these;
* **archive range reads** (issue 16): ``Storage.archive_range`` in this process, a page of 200
  broadcasts from a 100k-broadcast archive against one from a 1k archive, on MemoryStorage and
  RedisStorage (``benchmarks/archive.py``, which also runs alone); the median read of each and
  their ratio. ``--archive-only`` runs just these;
* **metrics on / off** (issue 17): ``--metrics-rounds`` alternating saturated runs at 1000
  subscribers and as many light-load runs, with ``serve --metrics`` against without;
  ``--metrics-only`` runs just these, into the published results;
* **many channels** (issue 18): ``--channels-n`` channels of ``--channels-subs`` subscribers
  (the load client's ``--channels``, published round robin) against one channel of as many,
  both offered ``--channels-rate`` deliveries/s, on MemoryStorage, a private single Redis and a
  private Redis Cluster: deliveries/s and server CPU per delivery, ``--channels-rounds``
  alternating rounds. ``--channels-only`` runs just these;
* **one crowded worker** (issue 18): ``--crowd-subs`` subscribers on one worker against
  ``--crowd-base``: connect time, RSS per idle connection, p50 / p99 at ``--crowd-rate``
  broadcasts/s in ``--crowd-rounds`` rounds. ``--crowd-only`` runs just these;
* **Redis Cluster** (issue 18): saturated fan-out at ``--cluster-subs`` subscribers on the
  private cluster against the private single Redis (``benchmarks/redis_nodes.py``), and the Redis
  commands per publish, per subscription and per idle second on both (``INFO commandstats``).
  The cluster rows are skipped, saying why, while ``channel-asgi serve`` has no
  ``--redis-cluster``. ``--cluster-only`` runs just these; ``--scale-only`` runs the three.

Usage (from the repository root, after ``scripts/setup``)::

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/run.py            # the full run (several minutes)
    .venv/bin/python benchmarks/run.py --quick    # smaller, for a smoke test
    .venv/bin/python benchmarks/run.py --mounts-only --mounts-ref e3ab96d  # the mount rows
    .venv/bin/python benchmarks/run.py --archive-only  # the archive rows
    .venv/bin/python benchmarks/run.py --scale-only    # many channels, 15k, Redis Cluster

It writes ``benchmarks/results/latest.json``, the table between the markers in
``docs/benchmarks.md`` and the chart ``docs/benchmarks.png`` (a ``--quick`` run writes only
``benchmarks/results/quick.json``; ``--no-write`` only prints). The servers part writes
``benchmarks/results/servers.json`` and its table in ``docs/servers.md``. The mounts part writes
its rows into ``latest.json`` and the table of ``docs/benchmarks.md``, with the rest of a full
run, or on their own (``--mounts-only``: marked as measured apart from the rest); so do the
archive part (``--archive-only``) and the scale parts (``--channels-only`` etc., which also
render the measured figures of ``docs/capacity.md``; with ``--no-write`` they only print, and
``--json-out FILE`` keeps their results).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Final

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "benchmarks" / "build"
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
SERVERS_DOC = ROOT / "docs" / "servers.md"
CHART = ROOT / "docs" / "benchmarks.png"
SECRET = secrets.token_hex(32)
UVICORN = ["--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"]


def cores() -> tuple[set[int], set[int]]:
    """CPUs for the server and for the load client (the same one on a single-core machine)."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return set(available), set(available)
    return {available[0]}, {available[1]}


SERVER_CPU, CLIENT_CPU = cores()


def pin(cpus: set[int]) -> None:
    """In a child before it runs: pin it to ``cpus``, and let it open as many files as it may.

    The soft limit on open files goes up to the hard one, so a server holds its 15,000
    subscribers (and a load client their sockets) wherever the soft limit is lower.
    """
    os.sched_setaffinity(0, cpus)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(OSError, ValueError):  # an unlimited hard limit: leave it be
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def build_loadgen() -> Path:
    """Compile loadgen.c (once per source change)."""
    source = ROOT / "benchmarks" / "loadgen.c"
    binary = BUILD / "loadgen"
    if binary.exists() and binary.stat().st_mtime > source.stat().st_mtime:
        return binary
    BUILD.mkdir(parents=True, exist_ok=True)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("the benchmark needs a C compiler (cc or gcc) to build its load client")
    subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@dataclass
class Server:
    """A server process under test."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    token_from_init: bool
    client_args: tuple[str, ...] = ()  # for the load client: its paths, when mounted

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def pids(self) -> list[int]:
        """The server's process and its workers (its process group)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.pid and fields[0] != "Z":
                    found.append(int(entry))
        return sorted(found)


@dataclass(frozen=True)
class Target:
    """How to start one of the compared servers."""

    name: str
    command: list[str]
    token_from_init: bool = True
    env: dict[str, str] = field(default_factory=dict)
    processes: int = 1  # the server and its workers, once it is ready
    cwd: Path = ROOT  # its channel_asgi is the one in this directory (python -m puts it first)
    client_args: tuple[str, ...] = ()

    @contextlib.contextmanager
    def start(self) -> Iterator[Server]:
        port = free_port()
        command = [sys.executable, *(arg.format(port=port) for arg in self.command)]
        process = subprocess.Popen(
            command,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: pin(SERVER_CPU),
            start_new_session=True,  # a process group of its own: its workers are found by it
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{self.name} did not start") from None
                    time.sleep(0.05)
            server = Server(self.name, process, port, self.token_from_init, self.client_args)
            while len(server.pids()) < self.processes:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start its workers")
                time.sleep(0.05)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def channel_asgi_target(
    name: str = "channel_asgi", *extra: str, module: str = "channel_asgi"
) -> Target:
    return Target(
        name,
        [
            "-m", module, "serve", "--port", "{port}", "--secret", SECRET,
            "--log-level", "warning", "--no-access-log",
            "--max-connections-per-ip", "0",  # every load client connects from 127.0.0.1
            *extra,
        ],
    )  # fmt: skip


#: channel_asgi with the number rule (SPEC 6.1) switched off: what the check costs.
UNCHECKED = channel_asgi_target("channel_asgi, number check off", module="benchmarks.unchecked")


BASELINE = Target(
    "sse-starlette + broadcaster",
    ["-m", "uvicorn", "benchmarks.sse_starlette_app:app", "--port", "{port}", *UVICORN],
    token_from_init=False,
)


def server_targets(redis_url: str, prefix: str) -> list[tuple[Target, str]]:
    """channel_asgi on every server, each with the uvicorn row it is compared with."""
    app = "benchmarks.servers_app:app"
    memory = {"CHANNEL_ASGI_CLI_OPTIONS": json.dumps({"secret": SECRET})}
    on_redis = {
        "CHANNEL_ASGI_CLI_OPTIONS": json.dumps(
            {"secret": SECRET, "redis": redis_url, "redis_prefix": prefix}
        )
    }
    uvicorn = ["-m", "uvicorn", app, "--port", "{port}", *UVICORN]
    uvicorn_name, uvicorn_redis_name = "uvicorn", "uvicorn (RedisStorage)"
    return [
        (Target(uvicorn_name, uvicorn, env=memory), uvicorn_name),
        (
            Target("hypercorn", ["-m", "hypercorn", app, "--bind", "127.0.0.1:{port}"],
                   env=memory, processes=2),
            uvicorn_name,
        ),
        (
            Target("granian", ["-m", "granian", "--interface", "asgi", "--port", "{port}",
                               "--log-level", "warning", app], env=memory, processes=2),
            uvicorn_name,
        ),
        (
            Target("daphne", ["-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", "{port}", app],
                   env=memory),
            uvicorn_name,
        ),
        (Target(uvicorn_redis_name, uvicorn, env=on_redis), uvicorn_redis_name),
        (
            Target("gunicorn -w 2 (uvicorn workers, RedisStorage)",
                   ["-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
                    "-b", "127.0.0.1:{port}", "--log-level", "warning", app],
                   env=on_redis, processes=3),
            uvicorn_redis_name,
        ),
    ]  # fmt: skip


def servers_light_load(binary: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Server CPU per delivery on every server, paced, against uvicorn on the same storage.

    Every server runs ``args.servers_rounds`` times, the servers in turn within a round (and in
    the reverse order in every other round), so that the machine's drift hits them alike; the
    ratio to uvicorn is the median of the rounds' ratios.
    """
    prefix = f"bench-servers-{secrets.token_hex(4)}"
    pairs = server_targets(args.redis, prefix)
    runs: dict[str, list[dict[str, Any]]] = {target.name: [] for target, _ in pairs}
    command = [
        "--subs", str(args.servers_subs), "--publishes", str(args.servers_count),
        "--rate", str(args.servers_rate), "--pub-conns", "4", "--timeout", "600",
    ]  # fmt: skip
    try:
        for index in range(args.servers_rounds):
            for target, _ in pairs if index % 2 == 0 else pairs[::-1]:
                with target.start() as server:
                    report = loadgen(binary, server, *command)
                report["server_cpu_us_per_delivery"] = (
                    report["server_cpu_s"] / max(report["deliveries"], 1) * 1e6
                )
                runs[target.name].append(report)
                print(
                    f"servers {target.name}: {report['server_cpu_us_per_delivery']:.2f} us "
                    "of server CPU per delivery",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        drop_redis_keys(args.redis, prefix)
    results: dict[str, Any] = {}
    for target, against in pairs:
        reports = runs[target.name]
        cpu = [r["server_cpu_us_per_delivery"] for r in reports]
        base = [r["server_cpu_us_per_delivery"] for r in runs[against]]
        results[target.name] = {
            "against": against,
            "server_cpu_us_per_delivery": statistics.median(cpu),
            "ratio": paired(cpu, base),
            "p50_ms": statistics.median(r["p50_ms"] for r in reports),
            "p99_ms": statistics.median(r["p99_ms"] for r in reports),
            "lost": sum(int(r["lost"]) + int(r["duplicates"]) for r in reports),
            "runs": reports,
        }
    return {
        "params": {
            "subs": args.servers_subs,
            "rate": args.servers_rate,
            "publishes": args.servers_count,
            "rounds": args.servers_rounds,
        },
        "servers": results,
    }


def servers_table(results: dict[str, Any]) -> str:
    """The "Servers" rows of docs/servers.md."""
    params = results["params"]
    lines = [
        f"Paced at {params['rate']:g} publishes/s to {params['subs']} subscribers (about "
        f"{params['rate'] * params['subs']:,.0f} deliveries/s), {params['publishes']} publishes "
        f"per run, {params['rounds']} rounds; the server pinned to one CPU, every process of it "
        "counted.",
        "",
        "| server | server CPU µs per delivery | against uvicorn on the same storage "
        "(median, range of rounds) | p50 / p99 ms | deliveries lost or repeated |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["servers"].items():
        ratio = row["ratio"]
        compared = (
            "1 (the reference)"
            if name == row["against"]
            else f"{ratio['median']:.2f}x ({ratio['low']:.2f} to {ratio['high']:.2f})"
        )
        lines.append(
            f"| {name} | {row['server_cpu_us_per_delivery']:.2f} | {compared} | "
            f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f} | {row['lost']} |"
        )
    return "\n".join(lines)


SUMMARY_ROW = "| server CPU per delivery, paced ([measured](#measured-cost)) |"


def servers_summary(results: dict[str, Any]) -> str:
    """The row of the servers page's first table that quotes the measured ratios."""
    rows = results["servers"]
    cells = []
    for name, row in rows.items():
        if name == row["against"]:
            if name == "uvicorn":
                cells.append("1 (the reference)")
            continue
        ratio = f"{row['ratio']['median']:.2f}x"
        cells.append(
            ratio if row["against"] == "uvicorn" else f"{ratio} (against uvicorn on Redis)"
        )
    return f"{SUMMARY_ROW} " + " | ".join(cells) + " |"


def write_servers_doc(markdown: str, results: dict[str, Any]) -> None:
    start, end = "<!-- servers-results:start -->", "<!-- servers-results:end -->"
    text = SERVERS_DOC.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    head = "\n".join(
        servers_summary(results) if line.startswith(SUMMARY_ROW) else line
        for line in head.split("\n")
    )
    SERVERS_DOC.write_text(f"{head}{start}\n{markdown}\n{end}{tail}")


def loadgen_command(binary: Path, server: Server, *args: str) -> list[str]:
    command = [str(binary), "--port", str(server.port)]
    for pid in server.pids() or [server.pid]:
        command += ["--cpu-pid", str(pid)]
    command += [*server.client_args, *args]
    if not server.token_from_init:
        command.append("--no-init")
    return command


def loadgen(binary: Path, server: Server, *args: str, stdin: int | None = None) -> dict[str, Any]:
    """Run the load client against ``server`` and return its JSON report."""
    result = subprocess.run(
        loadgen_command(binary, server, *args),
        capture_output=True,
        text=True,
        timeout=900,
        stdin=stdin,
        preexec_fn=lambda: pin(CLIENT_CPU),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"loadgen failed ({result.returncode}): {result.stderr.strip()}")
    return _report(result.stdout)


def loadgen_together(binary: Path, servers: list[Server], *args: str) -> list[dict[str, Any]]:
    """Run one load client per server, all at the same time; return their reports in order."""
    clients = [
        subprocess.Popen(
            loadgen_command(binary, server, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: pin(CLIENT_CPU),
        )
        for server in servers
    ]
    reports = []
    for client in clients:
        out, err = client.communicate(timeout=900)
        if client.returncode != 0:
            raise RuntimeError(f"loadgen failed ({client.returncode}): {err.strip()}")
        reports.append(_report(out))
    return reports


def _report(stdout: str) -> dict[str, Any]:
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def settle(server: Server, seconds: float = 1.0) -> None:
    """Wait until the server's CPU use is quiet (the previous run's connections are gone)."""

    def ticks() -> int:
        with open(f"/proc/{server.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        before = ticks()
        time.sleep(seconds)
        if ticks() - before < os.sysconf("SC_CLK_TCK") * seconds * 0.05:
            return


def saturated(
    binary: Path, target: Target, subs: int, deliveries: int, window: int
) -> dict[str, Any]:
    publishes = max(50, deliveries // subs)
    with target.start() as server:
        report = loadgen(
            binary, server, "--subs", str(subs), "--publishes", str(publishes),
            "--window", str(window), "--pub-conns", "16", "--timeout", "600",
        )  # fmt: skip
    report["server_cpu_per_100k"] = report["server_cpu_s"] / max(report["deliveries"], 1) * 1e5
    return report


def latency(
    binary: Path, target: Target, subs: int, rate: float, count: int, channels: int = 1
) -> dict[str, Any]:
    spread = ("--channels", str(channels)) if channels > 1 else ()
    with target.start() as server:
        report = loadgen(
            binary, server, "--subs", str(subs), "--publishes", str(count), "--rate", str(rate),
            "--pub-conns", "4", "--timeout", "600", *spread,
        )  # fmt: skip
    report["server_cpu_per_100k"] = report["server_cpu_s"] / max(report["deliveries"], 1) * 1e5
    return report


def idle(binary: Path, target: Target, subs: int) -> dict[str, Any]:
    """Connect ``subs`` idle subscribers; measure connect time and RSS per connection."""
    with target.start() as server:
        warm = loadgen(binary, server, "--subs", "1", "--publishes", "20", "--window", "4")
        settle(server)
        before = server.rss_kib()
        client = subprocess.Popen(
            loadgen_command(binary, server, "--mode", "idle", "--subs", str(subs)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: pin(CLIENT_CPU),
        )
        assert client.stdout is not None and client.stdin is not None
        ready = client.stdout.readline()
        if not ready.startswith("READY"):
            client.kill()
            raise RuntimeError(f"idle client failed: {ready!r}")
        connect_s = float(ready.split()[1])
        settle(server)
        after = server.rss_kib()
        client.stdin.close()
        client.wait(timeout=60)
        client.stdout.close()
    del warm
    return {
        "subs": subs,
        "connect_s": connect_s,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after - before) / subs,
    }


def publish_only(
    binary: Path, targets: list[Target], seconds: float, rounds: int
) -> dict[str, Any]:
    """Publishes per server CPU second with no subscriber, every server loaded at the same time.

    The servers share the server CPU and each one has its own load client, so whatever the
    machine does during a round (a shared VM's speed drifts by tens of percent within minutes)
    hits them alike; a server's rate is the publishes it answered over its own CPU seconds.
    Compare rounds pairwise (:func:`paired`). Before the rounds, each server runs alone once:
    a warm-up (caches, allocator, history at its full size) that also gives its plain
    publishes per second.
    """
    per_cpu: dict[str, list[float]] = {target.name: [] for target in targets}
    publish = ["--mode", "publish-only", "--duration", str(seconds), "--pub-conns", "16"]
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(target.start()) for target in targets]
        alone = {server.name: loadgen(binary, server, *publish) for server in servers}
        for _ in range(rounds):
            reports = loadgen_together(binary, servers, *publish)
            for server, report in zip(servers, reports, strict=True):
                per_cpu[server.name].append(report["answered"] / max(report["server_cpu_s"], 1e-9))
    return {
        name: {
            "publishes_per_s": alone[name]["publishes_per_s"],
            "publishes_per_cpu_s": statistics.median(values),
            "runs_per_cpu_s": values,
        }
        for name, values in per_cpu.items()
    }


def paired(ours: list[float], base: list[float]) -> dict[str, float]:
    """The median and range of the ratios of runs made side by side (the same round)."""
    ratios = sorted(a / b for a, b in zip(ours, base, strict=True))
    return {"median": statistics.median(ratios), "low": ratios[0], "high": ratios[-1]}


def side_by_side(
    binary: Path,
    targets: dict[str, Target],
    subs: int,
    rounds: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Saturated fan-out of two targets in alternating runs, ``rounds`` runs each.

    A single pair of runs is at the mercy of the machine's noise. ``targets`` maps a short name
    to each target, the one compared first: ``ratio`` is the first's deliveries/s over the
    second's, as the median of the pairs.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    pair = list(targets.items())
    for index in range(rounds):
        for name, target in pair if index % 2 == 0 else pair[::-1]:
            runs[name].append(saturated(binary, target, subs, args.deliveries, args.window))
    middle = {  # the median run of each, for the table
        name: sorted(reports, key=lambda r: r["deliveries_per_s"])[len(reports) // 2]
        for name, reports in runs.items()
    }
    (first, _), (second, _) = pair
    return {
        **middle,
        "ratio": paired(
            [r["deliveries_per_s"] for r in runs[first]],
            [r["deliveries_per_s"] for r in runs[second]],
        ),
        "runs": runs,
    }


def drop_redis_keys(url: str, prefix: str) -> None:
    """Delete the keys the Redis runs left under ``prefix`` (history outlives the server)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# The mounted app and the direct write (issue 15): bare and FastAPI-mounted, with and without.

MOUNTS_APP = "benchmarks.mounts_app:create"
#: The load client's paths when the ChannelApp is mounted at ``mounts_app.PREFIX``.
MOUNTED_PATHS = ("--sub-path", "/channel/subscribe/bench", "--pub-path", "/channel/publish/bench")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _pythonpath() -> dict[str, str]:
    """``benchmarks.mounts_app`` importable from any directory (``channel_asgi`` from ``cwd``)."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


@dataclass(frozen=True)
class Code:
    """One channel_asgi the mount rows serve: this checkout's, or one exported from a git ref."""

    key: str  # "checkout" or "ref"
    label: str
    cwd: Path  # holds the channel_asgi/ the servers import
    #: Its direct write: "fenced" (``channel_asgi.fastpath``, mounted apps too), "stream"
    #: (``channel_asgi.stream._direct_writer``, bare uvicorn only) or "none".
    direct_write: str


def probe_code(key: str, label: str, cwd: Path) -> Code:
    """Ask a server's interpreter which channel_asgi it imports from ``cwd``, and what it has."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.mounts_app", "--probe"],
        cwd=cwd,
        env={**os.environ, **_pythonpath()},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{label}: benchmarks.mounts_app --probe failed: {result.stderr}")
    found = json.loads(result.stdout.strip().splitlines()[-1])
    expected = (cwd / "channel_asgi").resolve()
    if Path(found["file"]).resolve().parent != expected:
        raise RuntimeError(f"{label}: the servers would import {found['file']}, not {expected}")
    kind = found["direct_write"]
    if isinstance(kind, bool):  # an older probe
        kind = "stream" if kind else "none"
    return Code(key, label, cwd, str(kind))


def checkout_code() -> Code:
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        changed = _git("status", "--porcelain", "--", "channel_asgi")
        label = f"this checkout ({commit}{', modified' if changed else ''})"
    except (OSError, subprocess.CalledProcessError):
        label = "this checkout"
    return probe_code("checkout", label, ROOT)


def code_at(ref: str) -> Code:
    """channel_asgi as of git ``ref``, exported once into ``benchmarks/build/``."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    dest = BUILD / f"channel_asgi-{commit[:12]}"
    if not (dest / "channel_asgi").is_dir():
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "channel_asgi"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
                tar.extractall(partial, filter="data")
            else:
                tar.extractall(partial)  # our own repository's archive
        partial.rename(dest)
    short = commit[:7]
    return probe_code("ref", short if commit.startswith(ref) else f"{ref} ({short})", dest)


#: How each variant's direct write is shown, and the mode ``mounts_app`` serves it with.
DIRECT_WRITE = {
    "on": ("on", "as-is"),
    "off": ("off (turned off for the benchmark)", "off"),
    "wrapped": ("off (Starlette wraps `send`)", "as-is"),
    "forced": ("forced on through Starlette's `send` wrappers", "forced"),
    "absent": ("none in this code", "as-is"),
    "mounted": ("on (through Starlette's `send` wrappers, fenced)", "as-is"),
    "mounted-off": ("off (turned off for the benchmark)", "off"),
}
APPS = {"bare": "bare ChannelApp", "fastapi": 'FastAPI, `app.mount("/channel", channels)`'}


@dataclass(frozen=True)
class Variant:
    """One server of the mount rows: a code, bare or mounted, and its direct write."""

    code: Code
    app: str  # a key of APPS
    direct_write: str  # a key of DIRECT_WRITE

    @property
    def name(self) -> str:
        return f"{self.code.key} {self.app} {self.direct_write}"

    def target(self) -> Target:
        options = {"secret": SECRET, "max_connections_per_ip": None}
        return Target(
            self.name,
            ["-m", "uvicorn", MOUNTS_APP, "--factory", "--port", "{port}", *UVICORN],
            env={
                "CHANNEL_ASGI_CLI_OPTIONS": json.dumps(options),
                "CHANNEL_ASGI_BENCH_MOUNT": self.app,
                "CHANNEL_ASGI_BENCH_DIRECT_WRITE": DIRECT_WRITE[self.direct_write][1],
                **_pythonpath(),
            },
            cwd=self.code.cwd,
            client_args=MOUNTED_PATHS if self.app == "fastapi" else (),
        )


#: The direct write a FastAPI mount gets as it is, by the code's kind of direct write.
_MOUNTED_AS_IS: Final = {"none": "absent", "stream": "wrapped", "fenced": "mounted"}


def variants_of(code: Code) -> list[Variant]:
    if code.direct_write == "none":
        return [Variant(code, "bare", "absent"), Variant(code, "fastapi", "absent")]
    if code.direct_write == "fenced":
        return [
            Variant(code, "bare", "on"),
            Variant(code, "bare", "off"),
            Variant(code, "fastapi", "mounted"),
            Variant(code, "fastapi", "mounted-off"),
        ]
    return [
        Variant(code, "bare", "on"),
        Variant(code, "bare", "off"),
        Variant(code, "fastapi", "wrapped"),
        Variant(code, "fastapi", "forced"),
    ]


def mount_ratios(
    codes: list[Code], runs: dict[str, dict[str, list[dict[str, Any]]]]
) -> list[dict[str, Any]]:
    """The paired ratios of the mount rows: each a name, what it divides, and its rounds."""
    out: list[dict[str, Any]] = []
    light, deliveries = "server_cpu_us_per_delivery", "deliveries_per_s"
    metrics = {light: "light", deliveries: "saturated"}

    def add(name: str, key: str, of: Variant, over: Variant, metric: str) -> None:
        values = {v.name: [r[metric] for r in runs[v.name][metrics[metric]]] for v in (of, over)}
        out.append(
            {
                "key": key,
                "name": name,
                "code": of.code.key,
                "of": of.name,
                "over": over.name,
                "metric": metric,
                **paired(values[of.name], values[over.name]),
            }
        )

    for code in codes:
        by = {(v.app, v.direct_write): v for v in variants_of(code)}
        shown = "absent" if code.direct_write == "none" else "on"  # as the code serves it
        bare = by["bare", shown]
        mounted = by["fastapi", _MOUNTED_AS_IS[code.direct_write]]
        add("FastAPI mount / bare, light-load CPU per delivery", "mount_light_cpu",
            mounted, bare, light)  # fmt: skip
        add("FastAPI mount / bare, deliveries/s saturated", "mount_deliveries",
            mounted, bare, deliveries)  # fmt: skip
        if code.direct_write != "none":
            add("without / with direct write, bare, light-load CPU per delivery",
                "direct_light_cpu", by["bare", "off"], bare, light)  # fmt: skip
            add("without / with direct write, bare, deliveries/s saturated",
                "direct_deliveries", by["bare", "off"], bare, deliveries)  # fmt: skip
        if code.direct_write == "stream":
            add("FastAPI mount with the direct write forced on / bare, light-load CPU per "
                "delivery", "forced_light_cpu", by["fastapi", "forced"], bare, light)  # fmt: skip
        if code.direct_write == "fenced":
            add("without / with direct write, FastAPI mount, deliveries/s saturated",
                "mounted_direct_deliveries", by["fastapi", "mounted-off"], mounted,
                deliveries)  # fmt: skip
    if len(codes) == 2:  # this checkout against the ref, each as it serves by default
        ours, then = (
            Variant(c, "bare", "absent" if c.direct_write == "none" else "on") for c in codes
        )
        label = codes[1].label
        add(f"bare, this checkout / {label}, light-load CPU per delivery", "ref_light_cpu",
            ours, then, light)  # fmt: skip
        add(f"bare, this checkout / {label}, deliveries/s saturated", "ref_deliveries",
            ours, then, deliveries)  # fmt: skip
    return out


def mounts_part(binary: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Bare and FastAPI-mounted, with and without the direct write, light and saturated.

    Every variant runs ``args.mounts_rounds`` times: in each round the variants take the light
    load in turn, then the saturated one (in the reverse order every other round), each on a
    fresh server, so that the machine's drift hits them alike; a ratio is the median of the
    rounds' ratios.
    """
    codes = [checkout_code()]
    if args.mounts_ref:
        codes.append(code_at(args.mounts_ref))
    variants = [variant for code in codes for variant in variants_of(code)]
    subs = args.mounts_subs
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        v.name: {"light": [], "saturated": []} for v in variants
    }
    started = time.monotonic()
    for index in range(args.mounts_rounds):
        order = variants if index % 2 == 0 else variants[::-1]
        for variant in order:
            report = latency(binary, variant.target(), subs, args.rate, args.mounts_count)
            report["server_cpu_us_per_delivery"] = (
                report["server_cpu_s"] / max(report["deliveries"], 1) * 1e6
            )
            runs[variant.name]["light"].append(report)
            print(
                f"mounts {variant.name}: {report['server_cpu_us_per_delivery']:.2f} us of server "
                f"CPU per delivery, p99 {report['p99_ms']:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
        for variant in order:
            report = saturated(binary, variant.target(), subs, args.deliveries, args.window)
            runs[variant.name]["saturated"].append(report)
            print(
                f"mounts {variant.name}: {report['deliveries_per_s']:,.0f} deliveries/s saturated",
                file=sys.stderr,
                flush=True,
            )
    params = {
        "subs": subs,
        "rate": args.rate,
        "publishes": args.mounts_count,
        "deliveries": args.deliveries,
        "window": args.window,
        "rounds": args.mounts_rounds,
        "seconds": round(time.monotonic() - started),
    }
    print(f"mounts part: {params['seconds']} s", file=sys.stderr, flush=True)
    return mounts_results(codes, runs, params)


def mounts_results(
    codes: list[Code], runs: dict[str, dict[str, list[dict[str, Any]]]], params: dict[str, Any]
) -> dict[str, Any]:
    """The mount rows from the load client's reports: ``runs[variant.name]["light"]`` etc."""
    rows: dict[str, Any] = {}
    for variant in (variant for code in codes for variant in variants_of(code)):
        light = runs[variant.name]["light"]
        full = runs[variant.name]["saturated"]
        cpu = [r["server_cpu_us_per_delivery"] for r in light]
        rate = [r["deliveries_per_s"] for r in full]
        rows[variant.name] = {
            "code": variant.code.key,
            "app": variant.app,
            "direct_write": variant.direct_write,
            "light": {
                "server_cpu_us_per_delivery": statistics.median(cpu),
                "low": min(cpu),
                "high": max(cpu),
                "p50_ms": statistics.median(r["p50_ms"] for r in light),
                "p99_ms": statistics.median(r["p99_ms"] for r in light),
                "runs": light,
            },
            "saturated": {
                "deliveries_per_s": statistics.median(rate),
                "low": min(rate),
                "high": max(rate),
                "runs": full,
            },
            "lost": sum(int(r["lost"]) + int(r["duplicates"]) for r in [*light, *full]),
        }
    return {
        "params": params,
        "codes": {
            code.key: {"label": code.label, "direct_write": code.direct_write} for code in codes
        },
        "variants": rows,
        "ratios": mount_ratios(codes, runs),
    }


def mounts_table(part: dict[str, Any]) -> str:
    """The "Mounted app and direct write" section of the results: what runs, rows and ratios."""
    params, codes = part["params"], part["codes"]
    rounds = (
        "one round"
        if params["rounds"] == 1
        else f"each of {params['rounds']} rounds (in the reverse order every other round)"
    )
    lines = ["### Mounted app and direct write", ""]
    if "separate" in part:
        lines += [
            f"Measured by `benchmarks/run.py --mounts-only` on {part['separate']}, apart from "
            "the rows above.",
            "",
        ]
    lines += [
        "The same ChannelApp (memory storage) on the same uvicorn "
        f"(`python -m uvicorn {MOUNTS_APP} --factory`, uvloop, httptools, no access log): bare, "
        "as `channel-asgi serve` serves it, or mounted in FastAPI at `/channel` as in the "
        "README's first example; with the direct write as the code has it, turned off, or "
        "(for the older code, whose direct write served a bare uvicorn only) forced on through "
        "the wrappers Starlette puts around `send` (`benchmarks/mounts_app.py`, "
        f"never a way to run the library). In {rounds} the variants run in turn, each on a "
        "fresh server: first "
        f"the light load, {params['rate']:g} broadcasts/s to {params['subs']} subscribers "
        f"({params['publishes']} broadcasts; server CPU per delivery, p50 / p99 latency), then "
        f"saturated fan-out to {params['subs']} subscribers (deliveries/s). A ratio is the median "
        "of the rounds' ratios, with their range.",
        "",
        "- **FastAPI mount / bare**: what the mount costs, with each app's direct write as it "
        "is (this checkout's, fenced in `channel_asgi/fastpath.py`, serves the mount through "
        "Starlette's `send` wrappers; the older one's has none there). Goal: at most 1.1x for "
        "the light-load CPU per delivery.",
        "- **without / with direct write**: the bare app with its direct write turned off over "
        "the same app with it on. Above 1x for CPU per delivery (below 1x for deliveries/s) is "
        "what the direct write saves.",
        "- **FastAPI mount with the direct write forced on / bare**: what a direct write that "
        "also served mounted apps would leave of the mount's cost.",
    ]
    if len(codes) == 2:
        lines.append(
            f"- **this checkout / {codes['ref']['label']}**: the bare app of this checkout over "
            "the one of that commit (each with its direct write as it is), in the same rounds. "
            "Goal: at least 0.95x of its deliveries/s."
        )
    missing = [code["label"] for code in codes.values() if code["direct_write"] in ("none", False)]
    if missing:
        lines.append(
            f"- {' and '.join(missing)} has no direct write (no "
            "`channel_asgi.stream._direct_writer`): its rows are the ones without it, and it has "
            "no with / without ratio."
        )
    lines += [
        "",
        "| code | app | direct write | server CPU µs per delivery, light load (range) | "
        "p50 / p99 ms, light load | deliveries/s saturated (range) | deliveries lost or "
        "repeated |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in part["variants"].values():
        light, full = row["light"], row["saturated"]
        lines.append(
            f"| {codes[row['code']]['label']} | {APPS[row['app']]} | "
            f"{DIRECT_WRITE[row['direct_write']][0]} | "
            f"{light['server_cpu_us_per_delivery']:.2f} ({light['low']:.2f} to "
            f"{light['high']:.2f}) | {light['p50_ms']:.1f} / {light['p99_ms']:.1f} | "
            f"{full['deliveries_per_s'] / 1000:.0f}k ({full['low'] / 1000:.0f}k to "
            f"{full['high'] / 1000:.0f}k) | {row['lost']} |"
        )
    lines += ["", "| ratio | code | median (range of rounds) |", "|---|---|---|"]
    for ratio in part["ratios"]:
        lines.append(
            f"| {ratio['name']} | {codes[ratio['code']]['label']} | {ratio['median']:.2f}x "
            f"({ratio['low']:.2f} to {ratio['high']:.2f}) |"
        )
    return "\n".join(lines)


def mount_goals(part: dict[str, Any]) -> list[tuple[str, Any, str, Callable[[float], bool] | None]]:
    """The goal lines of the mount rows: this checkout's, the direct write's from either code."""
    codes = part["codes"]

    def find(key: str, code: str | None = None) -> dict[str, Any] | None:
        return next(
            (r for r in part["ratios"] if r["key"] == key and code in (None, r["code"])), None
        )

    goals: list[tuple[str, Any, str, Callable[[float], bool] | None]] = [
        ("FastAPI mount / bare, light-load CPU per delivery", find("mount_light_cpu", "checkout"),
         "<= 1.1x", lambda v: v <= 1.1),
        ("FastAPI mount / bare, deliveries/s saturated", find("mount_deliveries", "checkout"),
         "reported", None),
    ]  # fmt: skip
    for key, name in (
        ("direct_light_cpu", "without / with direct write, bare, light-load CPU per delivery"),
        ("direct_deliveries", "without / with direct write, bare, deliveries/s saturated"),
    ):
        ratio = find(key)
        if ratio is None:
            labels = " or ".join(code["label"] for code in codes.values())
            goals.append((name, f"n/a: no direct write in {labels}", "decides it", None))
        else:
            label = codes[ratio["code"]]["label"]
            goals.append((f"{name} ({label})", ratio, "decides it", None))
    ratio = find("ref_deliveries")
    if ratio is not None:
        goals.append((ratio["name"], ratio, ">= 0.95x", lambda v: v >= 0.95))
    return goals


# Archive range reads (issue 16): benchmarks/archive.py, a part of its own.


def bench_module(filename: str) -> ModuleType:
    """A module of ``benchmarks/``, imported by its path (this file runs as a script)."""
    name = f"bench_{filename.removesuffix('.py')}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def archive_bench() -> ModuleType:
    """``benchmarks/archive.py``."""
    return bench_module("archive.py")


def archive_part(args: argparse.Namespace) -> dict[str, Any]:
    """The archive rows: a page from a ``--archive-big`` archive against a 1k one, both storages."""
    part: dict[str, Any] = archive_bench().archive_part(
        big=args.archive_big,
        repeats=args.archive_repeats,
        redis_url=None if args.no_redis else args.redis,
    )
    return part


def archive_only(args: argparse.Namespace) -> None:
    """``--archive-only``: the archive rows, into the published results if there are some."""
    part = archive_part(args)
    latest = RESULTS / "latest.json"
    if args.no_write or args.quick or not latest.exists():
        print(archive_bench().archive_table(part))
        return
    part["separate"] = time.strftime("%Y-%m-%d")  # the rest of the results are another run's
    results = json.loads(latest.read_text())
    results["archive"] = part
    results["ratios"] = ratios(results)
    markdown = table(results, results["ratios"])
    print(markdown)
    latest.write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_doc(markdown)


def metrics_only(args: argparse.Namespace) -> None:
    """``--metrics-only``: the metrics on / off rows, into the published results if any."""
    part = metrics_part(build_loadgen(), channel_asgi_target(), 1000, args)
    latest = RESULTS / "latest.json"
    if args.no_write or args.quick or not latest.exists():
        print(json.dumps({"fan_out": part["fan_out"]["ratio"], "light_cpu": part["light_cpu"]}))
        return
    part["separate"] = time.strftime("%Y-%m-%d")  # the rest of the results are another run's
    results = json.loads(latest.read_text())
    results["metrics"] = part
    results["ratios"] = ratios(results)
    markdown = table(results, results["ratios"])
    print(markdown)
    latest.write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_doc(markdown)


# Scale (issue 18): many small channels, one crowded worker, Redis Cluster against one Redis.


def redis_nodes_module() -> ModuleType:
    """``benchmarks/redis_nodes.py``."""
    return bench_module("redis_nodes.py")


#: What a cluster row says when it cannot run (``cluster_missing``), and how it starts.
NO_CLUSTER: Final = "n/a: `channel-asgi serve` has no `--redis-cluster` in this checkout"


def cluster_missing(cwd: Path = ROOT) -> str | None:
    """Why the cluster rows cannot run here, or None when they can."""
    if redis_nodes_module().redis_server() is None:
        return "n/a: no redis-server on this machine"
    result = subprocess.run(
        [sys.executable, "-m", "channel_asgi", "serve", "--help"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    return None if "--redis-cluster" in result.stdout else NO_CLUSTER


@dataclass
class Storages:
    """The storages the scale rows run on: a target each, the Redis nodes, and what is skipped."""

    targets: dict[str, Target]
    nodes: dict[str, Any]  # "redis", "cluster": redis_nodes.Nodes
    skipped: dict[str, str]


#: The storages of the scale rows, as the tables name them.
STORAGE_NAMES: Final = {
    "memory": "MemoryStorage",
    "redis": "RedisStorage, one Redis",
    "cluster": "RedisStorage, Redis Cluster (3 masters)",
}


@contextlib.contextmanager
def scale_storages(args: argparse.Namespace, *, cluster: bool = True) -> Iterator[Storages]:
    """Memory, a private single Redis and (``cluster``, when the code has it) a private cluster.

    The single Redis and the cluster's three masters are the same ``redis-server`` with the
    same settings (``benchmarks/redis_nodes.py``), each on its own loopback port and used by
    nothing else: the pairs compare the storages, not a shared Redis's other tenants.
    """
    nodes_module = redis_nodes_module()
    prefix = f"bench-scale-{secrets.token_hex(4)}"
    storages = Storages({"memory": channel_asgi_target()}, {}, {})
    with contextlib.ExitStack() as stack:
        if args.no_redis:
            storages.skipped["redis"] = storages.skipped["cluster"] = "n/a: --no-redis"
        elif nodes_module.redis_server() is None:
            storages.skipped["redis"] = storages.skipped["cluster"] = (
                "n/a: no redis-server on this machine"
            )
        else:
            single = stack.enter_context(nodes_module.redis_nodes(cluster=False))
            storages.nodes["redis"] = single
            storages.targets["redis"] = channel_asgi_target(
                "channel_asgi (RedisStorage)", "--redis", single.url, "--redis-prefix", prefix
            )
            missing = cluster_missing() if cluster else "n/a: not run"
            if missing is None:
                nodes = stack.enter_context(nodes_module.redis_nodes(cluster=True))
                storages.nodes["cluster"] = nodes
                storages.targets["cluster"] = channel_asgi_target(
                    "channel_asgi (Redis Cluster)", "--redis-cluster", nodes.url,
                    "--redis-prefix", prefix,
                )  # fmt: skip
            else:
                storages.skipped["cluster"] = missing
                print(f"cluster rows skipped: {missing}", file=sys.stderr, flush=True)
        yield storages


def paced(
    binary: Path, target: Target, subs: int, channels: int, rate: float, count: int
) -> dict[str, Any]:
    """``count`` broadcasts at ``rate`` per second over ``channels`` channels, on a fresh server."""
    with target.start() as server:
        report = loadgen(
            binary, server, "--subs", str(subs), "--channels", str(channels),
            "--publishes", str(count), "--rate", str(rate), "--pub-conns", "16",
            "--timeout", "900",
        )  # fmt: skip
    report["server_cpu_us_per_delivery"] = (
        report["server_cpu_s"] / max(report["deliveries"], 1) * 1e6
    )
    return report


def _runs_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["deliveries_per_s"] for r in reports]
    return {
        "deliveries_per_s": statistics.median(rates),
        "low": min(rates),
        "high": max(rates),
        "server_cpu_us_per_delivery": statistics.median(
            r["server_cpu_us_per_delivery"] for r in reports
        ),
        "p50_ms": statistics.median(r["p50_ms"] for r in reports),
        "p99_ms": statistics.median(r["p99_ms"] for r in reports),
        "lost": sum(int(r["lost"]) + int(r["duplicates"]) for r in reports),
        "runs": reports,
    }


def channels_part(binary: Path, args: argparse.Namespace, storages: Storages) -> dict[str, Any]:
    """Many small channels against one big one: the same subscribers, the same deliveries/s.

    ``args.channels_n`` channels of ``args.channels_subs`` subscribers, published to round
    robin, against one channel of as many subscribers, both offered ``args.channels_rate``
    deliveries per second for ``args.channels_seconds`` seconds: the small channels take that
    many broadcasts over ``args.channels_subs``, the big one over all the subscribers. Each
    storage runs both layouts in ``args.channels_rounds`` rounds (in the reverse order every
    other round); the ratio is the median of the rounds' ratios of deliveries/s.
    """
    per, n = args.channels_subs, args.channels_n
    subs, rate = n * per, args.channels_rate
    deliveries = int(rate * args.channels_seconds)
    layouts = {  # channels, publishes/s, publishes
        "many": (n, rate / per, max(n, deliveries // per)),
        "one": (1, rate / subs, max(10, deliveries // subs)),
    }
    started = time.monotonic()
    rows: dict[str, Any] = {}
    for storage, target in storages.targets.items():
        runs: dict[str, list[dict[str, Any]]] = {"many": [], "one": []}
        for index in range(args.channels_rounds):
            for layout in ("many", "one") if index % 2 == 0 else ("one", "many"):
                channels, publish_rate, count = layouts[layout]
                report = paced(binary, target, subs, channels, publish_rate, count)
                runs[layout].append(report)
                print(
                    f"channels {storage} {layout}: {report['deliveries_per_s']:,.0f} deliveries/s, "
                    f"{report['server_cpu_us_per_delivery']:.2f} us of server CPU per delivery",
                    file=sys.stderr,
                    flush=True,
                )
        rows[storage] = {
            **{layout: _runs_summary(reports) for layout, reports in runs.items()},
            "ratio": paired(
                [r["deliveries_per_s"] for r in runs["many"]],
                [r["deliveries_per_s"] for r in runs["one"]],
            ),
            # None when a run was too short for the CPU clock's ticks (the tests' tiny runs)
            "cpu_ratio": paired(
                [r["server_cpu_us_per_delivery"] for r in runs["many"]],
                [r["server_cpu_us_per_delivery"] for r in runs["one"]],
            )
            if all(r["server_cpu_us_per_delivery"] > 0 for r in runs["one"])
            else None,
        }
    params = {
        "channels": n,
        "subs_per_channel": per,
        "subs": subs,
        "deliveries_rate": rate,
        "seconds": args.channels_seconds,
        "publishes": {layout: count for layout, (_, _, count) in layouts.items()},
        "publish_rates": {layout: publish_rate for layout, (_, publish_rate, _) in layouts.items()},
        "rounds": args.channels_rounds,
        "took_s": round(time.monotonic() - started),
    }
    return {"params": params, "storages": rows, "skipped": dict(storages.skipped)}


def crowd_part(binary: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``args.crowd_subs`` subscribers on one worker against ``args.crowd_base``, one channel.

    For each size: the connect time and the RSS per connection of idle subscribers (as
    :func:`idle`), and the light load, ``args.crowd_count`` broadcasts at ``args.crowd_rate``
    per second (p50 / p99, server CPU per delivery) in ``args.crowd_rounds`` rounds, the sizes in
    turn; the p99 ratio is the median of the rounds' ratios.
    """
    ours = channel_asgi_target()
    sizes = [args.crowd_base, args.crowd_subs]
    started = time.monotonic()
    idles = {}
    for subs in sizes:
        idles[subs] = idle(binary, ours, subs)
        print(
            f"crowd idle {subs}: {idles[subs]['kib_per_connection']:.1f} KiB, connected in "
            f"{idles[subs]['connect_s']:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    light: dict[int, list[dict[str, Any]]] = {subs: [] for subs in sizes}
    spread: dict[int, list[dict[str, Any]]] = {subs: [] for subs in sizes}
    width = args.crowd_channel_subs
    for index in range(args.crowd_rounds):
        for subs in sizes if index % 2 == 0 else sizes[::-1]:
            layouts = (
                (light, 1, args.crowd_rate, args.crowd_count),
                (spread, subs // width, args.crowd_spread_rate, args.crowd_spread_count),
            )
            for runs, channels, rate, count in layouts:
                report = latency(binary, ours, subs, rate, count, channels)
                report["server_cpu_us_per_delivery"] = (
                    report["server_cpu_s"] / max(report["deliveries"], 1) * 1e6
                )
                runs[subs].append(report)
                print(
                    f"crowd light {subs} on {channels} channel(s): p50 {report['p50_ms']:.1f} "
                    f"p99 {report['p99_ms']:.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    base, big = sizes
    return {
        "params": {
            "base": base,
            "subs": big,
            "rate": args.crowd_rate,
            "publishes": args.crowd_count,
            "rounds": args.crowd_rounds,
            "channel_subs": width,
            "spread_rate": args.crowd_spread_rate,
            "spread_publishes": args.crowd_spread_count,
            "took_s": round(time.monotonic() - started),
        },
        "sizes": {
            str(subs): {
                "idle": idles[subs],
                "light": _runs_summary(light[subs]),
                "spread": _runs_summary(spread[subs]),
            }
            for subs in sizes
        },
        "p99_ratio": paired([r["p99_ms"] for r in light[big]], [r["p99_ms"] for r in light[base]]),
        "spread_p99_ratio": paired(
            [r["p99_ms"] for r in spread[big]], [r["p99_ms"] for r in spread[base]]
        ),
    }


def redis_ops(
    binary: Path,
    target: Target,
    nodes: Any,
    subs: int = 10,
    counts: tuple[int, int] = (100, 600),
    idle_s: float = 20.0,
) -> dict[str, Any]:
    """Redis commands per publish, per subscription and per idle second, from ``INFO commandstats``.

    Two runs on one server, ``counts`` broadcasts each to ``subs`` subscribers of one channel:
    their difference over the difference of the broadcasts is the commands of one publish (the
    subscriptions, the same in both runs, cancel out); what the first run leaves over is the
    subscriptions' (a join and a leave each, with the presence they keep). Then ``subs`` idle
    subscribers for ``idle_s`` seconds: the commands the worker sends on its own (its presence
    lease, renewed every third of ``--presence-ttl``). Commands a script runs count as well.
    """
    deltas = []
    with target.start() as server:
        for count in counts:
            before = nodes.command_calls()
            report = loadgen(
                binary, server, "--subs", str(subs), "--publishes", str(count), "--window", "16",
                "--pub-conns", "4", "--timeout", "600",
            )  # fmt: skip
            settle(server)  # the subscriptions' leave is written once the server sees them go
            deltas.append((nodes.command_calls() - before, report))
        client = subprocess.Popen(
            loadgen_command(binary, server, "--mode", "idle", "--subs", str(subs)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: pin(CLIENT_CPU),
        )
        assert client.stdout is not None and client.stdin is not None
        if not client.stdout.readline().startswith("READY"):
            client.kill()
            raise RuntimeError("idle client failed")
        settle(server)
        before, began = nodes.command_calls(), time.monotonic()
        time.sleep(idle_s)
        idle_calls, seconds = nodes.command_calls() - before, time.monotonic() - began
        client.stdin.close()
        client.wait(timeout=60)
        client.stdout.close()
    (first, first_report), (second, second_report) = deltas
    extra = counts[1] - counts[0]
    commands = sorted(set(first) | set(second))
    per_publish = {c: (second[c] - first[c]) / extra for c in commands}
    per_publish = {c: v for c, v in per_publish.items() if v > 0.005}
    per_subscription = {c: (first[c] - per_publish.get(c, 0) * counts[0]) / subs for c in commands}
    per_subscription = {c: v for c, v in per_subscription.items() if v > 0.005}
    return {
        "subs": subs,
        "counts": list(counts),
        "per_publish": per_publish,
        "per_publish_total": sum(per_publish.values()),
        "per_subscription": per_subscription,
        "per_subscription_total": sum(per_subscription.values()),
        "idle_subs": subs,
        "idle_per_s": sum(idle_calls.values()) / seconds,
        "idle_commands": {c: v / seconds for c, v in sorted(idle_calls.items())},
        "lost": sum(int(r["lost"]) + int(r["duplicates"]) for r in (first_report, second_report)),
    }


def cluster_part(binary: Path, args: argparse.Namespace, storages: Storages) -> dict[str, Any]:
    """Redis Cluster against one Redis: saturated fan-out, paired rounds; commands per publish."""
    part: dict[str, Any] = {
        "subs": args.cluster_subs,
        "rounds": args.cluster_rounds,
        "skipped": dict(storages.skipped),
        "ops": {},
    }
    started = time.monotonic()
    if "cluster" in storages.targets:
        pair = {"cluster": storages.targets["cluster"], "redis": storages.targets["redis"]}
        fan_out = side_by_side(binary, pair, args.cluster_subs, args.cluster_rounds, args)
        part["fan_out"] = fan_out
        print(
            f"cluster {args.cluster_subs}: {fan_out['cluster']['deliveries_per_s']:,.0f}/s, one "
            f"Redis {fan_out['redis']['deliveries_per_s']:,.0f}/s "
            f"({fan_out['ratio']['median']:.2f}x)",
            file=sys.stderr,
            flush=True,
        )
    for storage in ("redis", "cluster"):
        if storage in storages.targets:
            ops = redis_ops(
                binary,
                storages.targets[storage],
                storages.nodes[storage],
                idle_s=args.ops_idle_seconds,
            )
            part["ops"][storage] = ops
            print(
                f"redis ops {storage}: {ops['per_publish_total']:.2f} commands per publish "
                f"({ops['per_publish']}), {ops['per_subscription_total']:.1f} per subscription",
                file=sys.stderr,
                flush=True,
            )
    part["took_s"] = round(time.monotonic() - started)
    return part


#: The scale parts: their key in the results, and what runs them.
SCALE_PARTS: Final = ("channels", "crowd", "cluster")


def scale_parts(binary: Path, args: argparse.Namespace, which: tuple[str, ...]) -> dict[str, Any]:
    """Run the scale parts named in ``which``; their results by key."""
    out: dict[str, Any] = {}
    if "crowd" in which:
        out["crowd"] = crowd_part(binary, args)
    if "channels" in which or "cluster" in which:
        with scale_storages(args) as storages:
            if "channels" in which:
                out["channels"] = channels_part(binary, args, storages)
            if "cluster" in which:
                out["cluster"] = cluster_part(binary, args, storages)
    return out


def _separately(part: dict[str, Any], flag: str) -> list[str]:
    """The dated line of a part measured on its own (``flag``), apart from the rest."""
    if "separate" not in part:
        return []
    return [f"Measured by `benchmarks/run.py {flag}` on {part['separate']}, apart from the rows "
            "above.", ""]  # fmt: skip


def _value(ratio: dict[str, float] | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio['median']:.2f}x ({ratio['low']:.2f} to {ratio['high']:.2f})"


def channels_table(part: dict[str, Any]) -> str:
    """The "Many channels" section of the results."""
    params = part["params"]
    n, per, subs = params["channels"], params["subs_per_channel"], params["subs"]
    rates, counts = params["publish_rates"], params["publishes"]
    lines = [
        "### Many channels",
        "",
        *_separately(part, "--channels-only"),
        f"{n:,} channels of {per} subscribers against one channel of {subs:,}: the same "
        f"subscribers, offered the same {params['deliveries_rate']:,.0f} deliveries/s for about "
        f"{params['seconds']:g} s ({rates['many']:,.0f} broadcasts/s published round robin over "
        f"the {n:,} channels, {counts['many']:,} in all, against {rates['one']:g} broadcasts/s "
        f"to the one channel, {counts['one']:,} in all), 16 publishing connections, each run on "
        f"a fresh server, in {params['rounds']} rounds (in the reverse order every other round). "
        "Deliveries/s is what the subscribers received over the time from the first publish to "
        "the last delivery; a layout that keeps up gets the offered rate (the big channel a few "
        "percent more: its few broadcasts span one interval fewer than the run). Goal: the small "
        "channels at least 0.7x the big one's deliveries/s on every storage.",
        "",
        "| storage | layout | deliveries/s (range) | server CPU µs per delivery | p50 / p99 ms | "
        "deliveries lost or repeated |",
        "|---|---|---|---|---|---|",
    ]
    for storage, row in part["storages"].items():
        for layout, label in (("many", f"{n:,} x {per}"), ("one", f"1 x {subs:,}")):
            runs = row[layout]
            lines.append(
                f"| {STORAGE_NAMES.get(storage, storage)} | {label} | "
                f"{runs['deliveries_per_s'] / 1000:.1f}k ({runs['low'] / 1000:.1f}k to "
                f"{runs['high'] / 1000:.1f}k) | {runs['server_cpu_us_per_delivery']:.2f} | "
                f"{runs['p50_ms']:.1f} / {runs['p99_ms']:.1f} | {runs['lost']} |"
            )
    lines += ["", "| storage | many / one, deliveries/s | many / one, server CPU per delivery |"]
    lines.append("|---|---|---|")
    for storage, row in part["storages"].items():
        lines.append(
            f"| {STORAGE_NAMES.get(storage, storage)} | {_value(row['ratio'])} | "
            f"{_value(row['cpu_ratio'])} |"
        )
    for storage, why in part.get("skipped", {}).items():
        lines.append(f"| {STORAGE_NAMES.get(storage, storage)} | {why} | — |")
    return "\n".join(lines)


def crowd_table(part: dict[str, Any]) -> str:
    """The "Subscribers on one worker" section of the results."""
    params = part["params"]
    width = params.get("channel_subs")
    spread = (
        f" The same subscribers are then spread over channels of {width} "
        f"({params['spread_rate']:g} broadcasts/s round robin, {params['spread_publishes']} "
        "broadcasts): what holding that many connections costs each delivery, apart from how "
        "wide one broadcast is."
        if width
        else ""
    )
    lines = [
        f"### {params['subs']:,} subscribers on one worker",
        "",
        *_separately(part, "--crowd-only"),
        f"One `channel-asgi serve` worker (memory storage) with {params['subs']:,} subscribers on "
        f"one channel, against {params['base']:,}: the time to connect them (256 connecting at "
        "a time), the growth of the server's RSS per idle connection, and the light load, "
        f"{params['rate']:g} broadcasts/s ({params['publishes']} broadcasts) to every "
        f"subscriber, in {params['rounds']} rounds, the sizes in turn.{spread} Goals: at most "
        f"16 KiB per connection at {params['subs']:,}, and a p99 at {params['subs']:,} at most "
        f"2x the one at {params['base']:,} (the median of the rounds' ratios).",
        "",
        "| subscribers | connect s (ms per subscriber) | KiB per idle connection | p50 / p99 ms, "
        "one channel | server CPU µs per delivery, one channel | p50 / p99 ms, channels of "
        f"{width or '—'} | deliveries lost or repeated |",
        "|---|---|---|---|---|---|---|",
    ]
    for subs, size in part["sizes"].items():
        idle_row, light = size["idle"], size["light"]
        wide = size.get("spread")
        spread_cell = f"{wide['p50_ms']:.1f} / {wide['p99_ms']:.1f}" if wide else "—"
        lost = light["lost"] + (wide["lost"] if wide else 0)
        lines.append(
            f"| {int(subs):,} | {idle_row['connect_s']:.1f} "
            f"({idle_row['connect_s'] / int(subs) * 1000:.2f}) | "
            f"{idle_row['kib_per_connection']:.1f} | {light['p50_ms']:.1f} / "
            f"{light['p99_ms']:.1f} | {light['server_cpu_us_per_delivery']:.2f} | "
            f"{spread_cell} | {lost} |"
        )
    return "\n".join(lines)


def cluster_table(part: dict[str, Any]) -> str:
    """The "Redis Cluster" section of the results: the pair and the commands per publish."""
    lines = ["### Redis Cluster and Redis commands", "", *_separately(part, "--cluster-only")]
    skipped = part.get("skipped", {}).get("cluster")
    if "fan_out" in part:
        fan_out = part["fan_out"]
        lines += [
            f"Saturated fan-out at {part['subs']:,} subscribers (one channel, one worker) on "
            "a private three-master Redis Cluster against a private single Redis (the same "
            "redis-server, no persistence, `benchmarks/redis_nodes.py`), "
            f"{part['rounds']} runs each, alternating. Goal: the cluster at least 0.8x.",
            "",
            "| storage | deliveries/s (median run) | p99 ms | deliveries lost or repeated |",
            "|---|---|---|---|",
        ]
        for storage in ("cluster", "redis"):
            runs = fan_out["runs"][storage]
            lost = sum(int(r["lost"]) + int(r["duplicates"]) for r in runs)
            lines.append(
                f"| {STORAGE_NAMES[storage]} | {fan_out[storage]['deliveries_per_s'] / 1000:.0f}k "
                f"| {fan_out[storage]['p99_ms']:.1f} | {lost} |"
            )
        lines += ["", f"Cluster / one Redis: {_value(fan_out['ratio'])}.", ""]
    elif skipped:
        lines += [f"Redis Cluster rows: {skipped}.", ""]
    if part.get("ops"):
        sample = next(iter(part["ops"].values()))
        lines += [
            "Redis commands, counted with `INFO commandstats` on the benchmark's own Redis "
            f"servers (every node of the cluster): per publish, from two runs of "
            f"{sample['counts'][0]} and {sample['counts'][1]} broadcasts to {sample['subs']} "
            "subscribers on one channel (their difference, so the subscriptions cancel out); "
            "per subscription (its join and leave), what the first run leaves over; and per "
            f"second with {sample['idle_subs']} idle subscribers on one worker.",
            "",
            "| storage | commands per publish | by command | commands per subscription | "
            f"commands per second, {sample['idle_subs']} idle subscribers |",
            "|---|---|---|---|---|",
        ]
        for storage, ops in part["ops"].items():
            by = ", ".join(f"{c} {v:.2f}" for c, v in sorted(ops["per_publish"].items()))
            lines.append(
                f"| {STORAGE_NAMES[storage]} | {ops['per_publish_total']:.2f} | {by} | "
                f"{ops['per_subscription_total']:.1f} | {ops['idle_per_s']:.1f} |"
            )
    return "\n".join(lines).rstrip()


Goal = tuple[str, Any, str, Callable[[float], bool] | None]


def scale_goals(results: dict[str, Any]) -> list[Goal]:
    """The goal lines of the scale parts that ran (a skipped storage says why)."""
    goals: list[Goal] = []
    if "channels" in results:
        part = results["channels"]
        params = part["params"]
        name = (
            f"{params['channels']:,} channels x {params['subs_per_channel']} / 1 x "
            f"{params['subs']:,}, deliveries/s"
        )
        for storage, row in part["storages"].items():
            goals.append(
                (f"{name} ({STORAGE_NAMES[storage]})", row["ratio"], ">= 0.7x", lambda v: v >= 0.7)
            )
        for storage, why in part.get("skipped", {}).items():
            goals.append((f"{name} ({STORAGE_NAMES[storage]})", why, ">= 0.7x", None))
    if "crowd" in results:
        part = results["crowd"]
        params = part["params"]
        goals.append(
            (
                f"p99 at {params['subs']:,} / {params['base']:,} subscribers, one worker, "
                "light load",
                part["p99_ratio"],
                "<= 2x",
                lambda v: v <= 2,
            )
        )
        if "spread_p99_ratio" in part:
            goals.append(
                (
                    f"p99 at {params['subs']:,} / {params['base']:,} subscribers, one worker, "
                    f"light load, channels of {params['channel_subs']}",
                    part["spread_p99_ratio"],
                    "<= 2x",
                    lambda v: v <= 2,
                )
            )
    if "cluster" in results:
        part = results["cluster"]
        name = f"Redis Cluster / one Redis, deliveries/s at {part['subs']:,} subscribers"
        if "fan_out" in part:
            goals.append((name, part["fan_out"]["ratio"], ">= 0.8x", lambda v: v >= 0.8))
        else:
            goals.append((name, part["skipped"].get("cluster", "n/a: not run"), ">= 0.8x", None))
    return goals


def scale_faults(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every load client report of the scale parts (their lost and repeated deliveries count)."""
    reports: list[dict[str, Any]] = []
    for row in results.get("channels", {}).get("storages", {}).values():
        reports += [*row["many"]["runs"], *row["one"]["runs"]]
    for size in results.get("crowd", {}).get("sizes", {}).values():
        reports += size["light"]["runs"] + size.get("spread", {}).get("runs", [])
    cluster = results.get("cluster", {})
    for side in cluster.get("fan_out", {}).get("runs", {}).values():
        reports += side
    reports += [{"lost": ops["lost"], "duplicates": 0} for ops in cluster.get("ops", {}).values()]
    return reports


def scale_only(args: argparse.Namespace, which: tuple[str, ...]) -> None:
    """``--channels-only`` and the like: those parts, into the published results if any."""
    parts = scale_parts(build_loadgen(), args, which)
    latest = RESULTS / "latest.json"
    if args.no_write or args.quick or not latest.exists():
        if args.json_out:
            args.json_out.write_text(json.dumps(parts, indent=2, default=str) + "\n")
        renders = {"channels": channels_table, "crowd": crowd_table, "cluster": cluster_table}
        print("\n\n".join(renders[key](part) for key, part in parts.items()))
        for name, value, target, _ in scale_goals(parts):
            print(f"goal: {name}: {value} (target {target})")
        return
    results = json.loads(latest.read_text())
    for key, part in parts.items():
        part["separate"] = time.strftime("%Y-%m-%d")  # the rest of the results are another run's
        results[key] = part
    results["ratios"] = ratios(results)
    markdown = table(results, results["ratios"])
    print(markdown)
    latest.write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_doc(markdown)
    write_capacity_doc(results)


# The capacity-planning figures of docs/capacity.md, from the same results.

CAPACITY_DOC = ROOT / "docs" / "capacity.md"
#: What a figure says until the run that measures it has been made.
FULL_RUN: Final = "measured by the full run (`benchmarks/run.py`)"


def capacity_table(results: dict[str, Any]) -> str:
    """The measured figures of docs/capacity.md: each one, what it is, and where it comes from."""
    ours = results["servers"]["channel_asgi"]
    rows: list[tuple[str, str, str]] = []
    crowd = results.get("crowd")
    if crowd:
        big = crowd["sizes"][str(crowd["params"]["subs"])]
        kib = big["idle"]["kib_per_connection"]
        rows += [
            (
                "server memory per idle SSE connection",
                f"{kib:.1f} KiB at {crowd['params']['subs']:,} subscribers "
                f"(about {1024 * 1024 / max(kib, 0.1):,.0f} connections per GiB)",
                "15,000 subscribers on one worker",
            ),
            (
                "connect rate, one worker",
                f"{crowd['params']['subs'] / big['idle']['connect_s']:,.0f} subscribers/s "
                f"({crowd['params']['subs']:,} in {big['idle']['connect_s']:.1f} s)",
                "15,000 subscribers on one worker",
            ),
            (
                f"light-load latency at {crowd['params']['subs']:,} subscribers on one channel",
                f"p50 {big['light']['p50_ms']:.0f} ms, p99 {big['light']['p99_ms']:.0f} ms at "
                f"{crowd['params']['rate']:g} broadcasts/s",
                "15,000 subscribers on one worker",
            ),
        ]
    else:
        biggest = max(ours["idle"], key=int)
        kib = ours["idle"][biggest]["kib_per_connection"]
        rows.append(
            (
                "server memory per idle SSE connection",
                f"{kib:.1f} KiB at {int(biggest):,} subscribers; at 15,000: {FULL_RUN}",
                "idle connections",
            )
        )
    saturated_runs = ours["saturated"]
    middle = (
        saturated_runs.get("1000")
        or saturated_runs.get(1000)
        or next(iter(saturated_runs.values()))
    )
    rows += [
        (
            "deliveries per server CPU second, one big channel, saturated",
            f"{1e5 / middle['server_cpu_per_100k'] / 1e6:.1f} million (1,000 subscribers)",
            "saturated fan-out",
        ),
        (
            "deliveries per server CPU second, one channel, light load",
            f"{1e5 / ours['latency']['server_cpu_per_100k'] / 1000:,.0f}k "
            f"({results['params']['latency_subs']:,} subscribers, {results['params']['rate']:g} "
            "broadcasts/s)",
            "latency at light load",
        ),
    ]
    channels = results.get("channels")
    if channels:
        params = channels["params"]
        for storage, row in channels["storages"].items():
            cpu = row["many"]["server_cpu_us_per_delivery"]
            rows.append(
                (
                    f"deliveries per server CPU second, {params['channels']:,} channels of "
                    f"{params['subs_per_channel']} ({STORAGE_NAMES[storage]})",
                    f"{1e6 / max(cpu, 1e-9) / 1000:,.0f}k (at "
                    f"{params['publish_rates']['many']:,.0f} broadcasts/s)",
                    "many channels",
                )
            )
    else:
        rows.append(("deliveries per server CPU second, 1,000 channels of 10", FULL_RUN, "—"))
    rows.append(
        (
            "publishes per server CPU second, no subscribers (memory storage)",
            f"{ours['publish_only']['publishes_per_cpu_s'] / 1000:.1f}k",
            "publish only",
        )
    )
    if "redis" in results:
        pair = next(iter(results["redis"].values()))
        rows.append(
            (
                "RedisStorage against memory, saturated deliveries/s (one worker)",
                f"{pair['ratio']['median']:.2f}x",
                "Redis",
            )
        )
    cluster = results.get("cluster", {})
    for storage in ("redis", "cluster"):
        ops = cluster.get("ops", {}).get(storage)
        label = f"Redis commands per publish ({STORAGE_NAMES[storage]})"
        if ops:
            by = ", ".join(f"{c} {v:.1f}" for c, v in sorted(ops["per_publish"].items()))
            rows.append(
                (
                    label,
                    f"{ops['per_publish_total']:.1f} ({by}); {ops['per_subscription_total']:.0f} "
                    f"per subscription; {ops['idle_per_s']:.1f}/s with {ops['idle_subs']} idle "
                    "subscribers",
                    "Redis Cluster and Redis commands",
                )
            )
        else:
            why = cluster.get("skipped", {}).get(storage)
            rows.append((label, why or FULL_RUN, "—"))
    if "fan_out" in cluster:
        rows.append(
            (
                "Redis Cluster against one Redis, saturated deliveries/s (one worker)",
                f"{cluster['fan_out']['ratio']['median']:.2f}x",
                "Redis Cluster and Redis commands",
            )
        )
    lines = ["| figure | measured | benchmark row |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {where} |" for name, value, where in rows]
    return "\n".join(lines)


def write_capacity_doc(results: dict[str, Any]) -> None:
    """Render the measured figures into docs/capacity.md, between its markers."""
    start, end = "<!-- capacity:start -->", "<!-- capacity:end -->"
    text = CAPACITY_DOC.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    CAPACITY_DOC.write_text(f"{head}{start}\n{capacity_table(results)}\n{end}{tail}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every scenario, each measured on both servers back to back (machine drift hits both)."""
    binary = build_loadgen()
    subs_list = [int(s) for s in args.subs.split(",")]
    ours = channel_asgi_target()
    budgets = {ours.name: args.deliveries, BASELINE.name: args.baseline_deliveries}
    targets = [ours, BASELINE]
    entries: dict[str, dict[str, Any]] = {t.name: {"saturated": {}, "idle": {}} for t in targets}

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    for subs in subs_list:
        for target in targets:
            report = saturated(binary, target, subs, budgets[target.name], args.window)
            entries[target.name]["saturated"][subs] = report
            say(f"saturated {subs:>5} {target.name}: {report['deliveries_per_s']:,.0f}/s")
    for target in targets:
        report = latency(binary, target, args.latency_subs, args.rate, args.latency_count)
        entries[target.name]["latency"] = report
        say(f"latency {target.name}: p50 {report['p50_ms']:.1f} p99 {report['p99_ms']:.1f} ms")
    for subs in args.idle_subs:
        for target in targets:
            report = idle(binary, target, subs)
            entries[target.name]["idle"][subs] = report
            say(
                f"idle {subs:>5} {target.name}: {report['kib_per_connection']:.1f} KiB, "
                f"connected in {report['connect_s']:.1f} s"
            )
    rounds = publish_only(binary, [*targets, UNCHECKED], args.publish_seconds, args.publish_rounds)
    unchecked_publish = rounds.pop(UNCHECKED.name)
    for name, report in rounds.items():
        entries[name]["publish_only"] = report
        say(
            f"publish only {name}: {report['publishes_per_s']:,.0f}/s alone, "
            f"{report['publishes_per_cpu_s']:,.0f} per CPU second together"
        )
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "server_cpu": sorted(SERVER_CPU),
            "client_cpu": sorted(CLIENT_CPU),
            "platform": platform.platform(),
        },
        "servers": entries,
    }
    subs = 1000 if 1000 in subs_list else subs_list[0]
    check = {"on": ours, "off": UNCHECKED}
    results["number_check"] = {
        "subs": subs,
        "fan_out": side_by_side(binary, check, subs, args.check_rounds, args),
        "publish_only": {
            "off": unchecked_publish,
            "ratio": paired(
                entries[ours.name]["publish_only"]["runs_per_cpu_s"],
                unchecked_publish["runs_per_cpu_s"],
            ),
        },
    }
    results["metrics"] = metrics_part(binary, ours, subs, args)
    fan_out = results["number_check"]["fan_out"]
    say(
        f"number check {subs}: {fan_out['on']['deliveries_per_s']:,.0f}/s on, "
        f"{fan_out['off']['deliveries_per_s']:,.0f}/s off; publish only "
        f"{results['number_check']['publish_only']['ratio']['median']:.3f}x"
    )
    if not args.no_redis:
        prefix = f"bench-{secrets.token_hex(4)}"
        redis_target = channel_asgi_target(
            "channel_asgi (RedisStorage)", "--redis", args.redis, "--redis-prefix", prefix
        )
        storages = {"redis": redis_target, "memory": ours}
        try:
            pair = side_by_side(binary, storages, subs, args.redis_rounds, args)
        finally:
            drop_redis_keys(args.redis, prefix)
        results["redis"] = {subs: pair}
        say(
            f"redis {subs}: {pair['redis']['deliveries_per_s']:,.0f}/s "
            f"(memory, same rounds: {pair['memory']['deliveries_per_s']:,.0f}/s)"
        )
    return results


#: channel_asgi with ``--metrics`` (Prometheus counting on): what the metrics cost.
METRICS_ON = channel_asgi_target("channel_asgi, metrics on", "--metrics")


def metrics_part(binary: Path, ours: Target, subs: int, args: argparse.Namespace) -> dict[str, Any]:
    """Metrics on against off: saturated deliveries/s and light-load CPU per delivery, paired."""
    pair = {"on": METRICS_ON, "off": ours}
    fan_out = side_by_side(binary, pair, subs, args.metrics_rounds, args)
    light: dict[str, list[float]] = {"on": [], "off": []}
    for index in range(args.metrics_rounds):
        for name, target in list(pair.items()) if index % 2 == 0 else list(pair.items())[::-1]:
            report = latency(binary, target, args.latency_subs, args.rate, args.latency_count)
            light[name].append(report["server_cpu_per_100k"])
    part = {
        "subs": subs,
        "fan_out": fan_out,
        "light_cpu": {**light, "ratio": paired(light["on"], light["off"])},
    }
    print(
        f"metrics {subs}: {fan_out['on']['deliveries_per_s']:,.0f}/s on, "
        f"{fan_out['off']['deliveries_per_s']:,.0f}/s off; light CPU on / off "
        f"{part['light_cpu']['ratio']['median']:.3f}x",
        file=sys.stderr,
        flush=True,
    )
    return part


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The goals of issue 6, as ratios of one run."""
    ours = results["servers"]["channel_asgi"]
    base = results["servers"]["sse-starlette + broadcaster"]
    out: dict[str, Any] = {"deliveries": {}}
    for subs, report in ours["saturated"].items():
        out["deliveries"][subs] = (
            report["deliveries_per_s"] / base["saturated"][subs]["deliveries_per_s"]
        )
    out["p99"] = ours["latency"]["p99_ms"] / base["latency"]["p99_ms"]
    out["light_cpu"] = (
        ours["latency"]["server_cpu_per_100k"] / base["latency"]["server_cpu_per_100k"]
    )
    # The server is CPU-bound here: compare publishes per CPU second of the server, which
    # scheduling noise on a shared machine does not move (the raw rates are in the table too),
    # round by round.
    out["publish_only"] = paired(
        ours["publish_only"]["runs_per_cpu_s"], base["publish_only"]["runs_per_cpu_s"]
    )
    biggest = max(ours["idle"], key=int)
    out["kib_per_idle"] = ours["idle"][biggest]["kib_per_connection"]
    if "redis" in results:
        out["redis"] = next(iter(results["redis"].values()))["ratio"]
    connects = sorted((int(s), r["connect_s"]) for s, r in ours["idle"].items())
    out["connect_per_sub_ms"] = {s: c / s * 1000 for s, c in connects}
    if "mounts" in results:  # issue 15: the mount and the direct write
        out["mounts"] = {
            f"{ratio['name']} ({ratio['code']})": {k: ratio[k] for k in ("median", "low", "high")}
            for ratio in results["mounts"]["ratios"]
        }
    if "archive" in results:  # issue 16: a page of a big archive against a small one
        out["archive"] = {
            name: storage["ratio"] for name, storage in results["archive"]["storages"].items()
        }
    if "channels" in results:  # issue 18: many small channels against one big one
        out["channels"] = {
            name: row["ratio"] for name, row in results["channels"]["storages"].items()
        }
    if "crowd" in results:  # issue 18: many subscribers on one worker
        crowd = results["crowd"]
        big = crowd["sizes"][str(crowd["params"]["subs"])]
        out["crowd"] = {
            "p99": crowd["p99_ratio"],
            "spread_p99": crowd.get("spread_p99_ratio"),
            "kib_per_connection": big["idle"]["kib_per_connection"],
        }
    if "fan_out" in results.get("cluster", {}):  # issue 18: Redis Cluster against one Redis
        out["cluster"] = results["cluster"]["fan_out"]["ratio"]
    return out


def faults(results: dict[str, Any], name: str) -> int:
    """Deliveries lost or repeated over every fan-out run of server ``name`` (must be 0)."""
    entry = results["servers"][name]
    reports = [*entry["saturated"].values(), entry["latency"]]
    if name == "channel_asgi":  # its RedisStorage runs, and the memory runs paired with them
        for pair in results.get("redis", {}).values():
            reports += [*pair["runs"]["redis"], *pair["runs"]["memory"]]
        for part in ("number_check", "metrics"):  # and the runs of the on / off pairs
            if part in results:
                for side in results[part]["fan_out"]["runs"].values():
                    reports += side
        for row in results.get("mounts", {}).get("variants", {}).values():
            if row["code"] == "checkout":  # and this code's runs, bare and mounted
                reports += [*row["light"]["runs"], *row["saturated"]["runs"]]
        reports += scale_faults(results)  # and every run of the scale parts
    return sum(int(report["lost"]) + int(report["duplicates"]) for report in reports)


def table(results: dict[str, Any], r: dict[str, Any]) -> str:
    ours = results["servers"]["channel_asgi"]
    base = results["servers"]["sse-starlette + broadcaster"]
    subs_list = list(ours["saturated"])

    def row(name: str, entry: dict[str, Any]) -> str:
        sat = " / ".join(
            f"{entry['saturated'][s]['deliveries_per_s'] / 1000:.0f}k" for s in subs_list
        )
        middle = subs_list[len(subs_list) // 2]
        busiest = entry["saturated"][middle]
        cpu = busiest["server_cpu_per_100k"]
        client_cpu = busiest["client_cpu_s"] / max(busiest["deliveries"], 1) * 1e5
        lat = entry["latency"]
        biggest = max(entry["idle"], key=int)
        kib = entry["idle"][biggest]["kib_per_connection"]
        pub = entry["publish_only"]
        return (
            f"| {name} | {sat} | {cpu:.2f} / {client_cpu:.2f} | "
            f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} | "
            f"{lat['server_cpu_per_100k']:.2f} | {kib:.1f} | "
            f"{pub['publishes_per_s'] / 1000:.1f}k / {pub['publishes_per_cpu_s'] / 1000:.1f}k | "
            f"{faults(results, name)} |"
        )

    subs_text = " / ".join(str(s) for s in subs_list)
    middle = subs_list[len(subs_list) // 2]
    params = results["params"]
    header = [
        "server",
        f"deliveries/s at {subs_text} subscribers",
        f"CPU s per 100k deliveries, server / load client ({middle} subs, saturated)",
        f"p50 / p99 ms at {params['rate']:g} publishes/s, {params['latency_subs']} subs",
        "CPU s per 100k deliveries at that light load",
        f"KiB per idle connection ({max(ours['idle'], key=int)} subs)",
        "publishes/s, no subscribers: alone / per server CPU second, loaded together",
        "deliveries lost or repeated, every run",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
        row("channel_asgi", ours),
        row("sse-starlette + broadcaster", base),
    ]
    goals: list[tuple[str, Any, str, Callable[[float], bool] | None]] = [
        (
            "deliveries/s at 1000 subscribers",
            r["deliveries"].get(1000) or r["deliveries"][middle],
            ">= 8x",
            lambda v: v >= 8,
        ),
        ("p99 latency, light load", r["p99"], "<= 1/4", lambda v: v <= 0.25),
        ("server CPU per delivery, light load", r["light_cpu"], "<= 1/2", lambda v: v <= 0.5),
        (
            "publishes per server CPU second, no subscribers",
            r["publish_only"],
            ">= 1.2x",
            lambda v: v >= 1.2,
        ),
    ]
    if "number_check" in results:
        check = results["number_check"]
        goals += [
            (
                f"number check on / off, deliveries/s at {check['subs']} subscribers",
                check["fan_out"]["ratio"],
                ">= 0.95x",
                lambda v: v >= 0.95,
            ),
            (
                "number check on / off, publishes per server CPU second",
                check["publish_only"]["ratio"],
                ">= 0.95x",
                lambda v: v >= 0.95,
            ),
        ]
    if "metrics" in results:
        metrics = results["metrics"]
        apart = f" (`--metrics-only`, {metrics['separate']})" if "separate" in metrics else ""
        goals += [
            (
                f"metrics on / off, deliveries/s at {metrics['subs']} subscribers{apart}",
                metrics["fan_out"]["ratio"],
                ">= 0.95x",
                lambda v: v >= 0.95,
            ),
            (
                f"metrics on / off, server CPU per delivery, light load{apart}",
                metrics["light_cpu"]["ratio"],
                "<= 1.05x",
                lambda v: v <= 1.05,
            ),
        ]
    if "mounts" in results:
        goals += mount_goals(results["mounts"])
    if "archive" in results:
        bench = archive_bench()
        params = results["archive"]["params"]
        for name, storage in results["archive"]["storages"].items():
            goals.append(
                (
                    f"archive page, {params['big']:,} / {params['small']:,} broadcasts "
                    f"({bench.STORAGES.get(name, name)})",
                    storage["ratio"],
                    f"<= {bench.GOAL:g}x",
                    lambda v, goal=bench.GOAL: v <= goal,
                )
            )
    goals += scale_goals(results)
    if "redis" in r:
        goals.append(
            (
                "RedisStorage / MemoryStorage deliveries/s (1 worker)",
                r["redis"],
                ">= 0.8x",
                lambda v: v >= 0.8,
            )
        )
    lines += [
        "",
        "| goal | channel_asgi / sse-starlette + broadcaster | target | met |",
        "|---|---|---|---|",
    ]
    for name, value, target, check in goals:
        if isinstance(value, str):  # nothing measured (a part of the code is not there)
            text, median = value, None
        elif isinstance(value, dict):  # paired rounds: their median, and their range
            median = value["median"]
            text = f"{median:.2f}x (rounds {value['low']:.2f} to {value['high']:.2f})"
        else:
            median, text = value, f"{value:.2f}x"
        met = "—" if check is None or median is None else "yes" if check(median) else "no"
        lines.append(f"| {name} | {text} | {target} | {met} |")
    lines.append(
        f"| KiB per idle subscriber | {r['kib_per_idle']:.1f} KiB | <= 16 KiB | "
        f"{'yes' if r['kib_per_idle'] <= 16 else 'no'} |"
    )
    if "crowd" in r:
        kib, subs = r["crowd"]["kib_per_connection"], results["crowd"]["params"]["subs"]
        lines.append(
            f"| KiB per idle subscriber at {subs:,} on one worker | {kib:.1f} KiB | <= 16 KiB | "
            f"{'yes' if kib <= 16 else 'no'} |"
        )
    lost = faults(results, "channel_asgi")
    lines.append(
        f"| deliveries lost or repeated, every channel_asgi run | {lost} | 0 | "
        f"{'yes' if lost == 0 else 'no'} |"
    )
    connects = ", ".join(f"{s}: {ms:.2f} ms" for s, ms in r["connect_per_sub_ms"].items())
    lines += ["", f"Connect time per subscriber (channel_asgi, by channel size): {connects}."]
    if "mounts" in results:
        lines += ["", mounts_table(results["mounts"])]
    if "archive" in results:
        lines += ["", archive_bench().archive_table(results["archive"])]
    for key, render in (("channels", channels_table), ("crowd", crowd_table),
                        ("cluster", cluster_table)):  # fmt: skip
        if key in results:
            lines += ["", render(results[key])]
    return "\n".join(lines)


def chart(results: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')", file=sys.stderr)
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, entry in results["servers"].items():
        subs = [int(s) for s in entry["saturated"]]
        left.plot(
            subs,
            [entry["saturated"][s]["deliveries_per_s"] for s in entry["saturated"]],
            "o-",
            label=name,
        )
        right.plot(
            subs, [entry["saturated"][s]["p99_ms"] for s in entry["saturated"]], "o-", label=name
        )
    for axis, title in (
        (left, "deliveries per second (saturated)"),
        (right, "p99 latency, ms (saturated)"),
    ):
        axis.set_xscale("log")
        axis.set_xlabel("subscribers on one channel")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend()
    left.set_yscale("log")
    right.set_yscale("log")  # the client's histogram stops at 10 s
    fig.tight_layout()
    fig.savefig(CHART, dpi=110)
    return True


def write_doc(markdown: str) -> None:
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(f"{head}{start}\n{markdown}\n{end}{tail}")


def mounts_only(args: argparse.Namespace) -> None:
    """``--mounts-only``: the mount rows, into the published results if there are some."""
    part = mounts_part(build_loadgen(), args)
    latest = RESULTS / "latest.json"
    if args.no_write or args.quick or not latest.exists():
        print(mounts_table(part))
        return
    part["separate"] = time.strftime("%Y-%m-%d")  # the rest of the results are another run's
    results = json.loads(latest.read_text())
    results["mounts"] = part
    results["ratios"] = ratios(results)
    markdown = table(results, results["ratios"])
    print(markdown)
    latest.write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_doc(markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a small run, for a smoke test")
    parser.add_argument("--subs", default="100,1000,5000", help="subscriber counts (saturated)")
    parser.add_argument("--deliveries", type=int, default=2_000_000, help="per channel_asgi run")
    parser.add_argument("--baseline-deliveries", type=int, default=500_000, help="per baseline run")
    parser.add_argument("--window", type=int, default=256, help="broadcasts in flight, saturated")
    parser.add_argument("--rate", type=float, default=20.0, help="publishes/s for latency")
    parser.add_argument("--latency-subs", type=int, default=1000)
    parser.add_argument("--latency-count", type=int, default=300)
    parser.add_argument("--publish-seconds", type=float, default=2.0, help="per publish-only round")
    parser.add_argument("--publish-rounds", type=int, default=8, help="publish-only rounds")
    parser.add_argument("--redis-rounds", type=int, default=3, help="Redis and memory runs each")
    parser.add_argument(
        "--check-rounds", type=int, default=3, help="runs each with the number check on and off"
    )
    parser.add_argument(
        "--metrics-rounds",
        type=int,
        default=6,
        help="runs each with metrics on and off (a 5%% cost needs more rounds than the noise)",
    )
    parser.add_argument(
        "--metrics-only",
        action="store_true",
        help="run only the metrics on / off rows (--metrics-rounds each), at 1000 subscribers",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--servers-subs", type=int, default=200, help="subscribers, servers part")
    parser.add_argument("--servers-rate", type=float, default=200.0, help="publishes/s, servers")
    parser.add_argument("--servers-count", type=int, default=1000, help="publishes per servers run")
    parser.add_argument("--servers-rounds", type=int, default=3, help="rounds of the servers part")
    parser.add_argument(
        "--servers-only", action="store_true", help="run only the servers part (docs/servers.md)"
    )
    parser.add_argument("--mounts-subs", type=int, default=1000, help="subscribers, mounts part")
    parser.add_argument(
        "--mounts-count", type=int, default=200, help="broadcasts per light-load run, mounts part"
    )
    parser.add_argument("--mounts-rounds", type=int, default=3, help="rounds of the mounts part")
    parser.add_argument(
        "--mounts-ref",
        "--before",
        metavar="REF",
        help="also serve channel_asgi as of git REF in the mounts part (e.g. the last commit "
        "with the direct write), side by side with this checkout",
    )
    parser.add_argument(
        "--mounts-only",
        action="store_true",
        help="run only the mounts part: bare and FastAPI-mounted, with and without the direct "
        "write (its rows in latest.json and docs/benchmarks.md)",
    )
    parser.add_argument(
        "--archive-big", type=int, default=100_000, help="broadcasts in the big archive"
    )
    parser.add_argument(
        "--archive-repeats", type=int, default=5, help="reads at each media time, archive part"
    )
    parser.add_argument(
        "--archive-only",
        action="store_true",
        help="run only the archive part: a page of a big archive against a small one, both "
        "storages (its rows in latest.json and docs/benchmarks.md)",
    )
    parser.add_argument(
        "--channels-n", type=int, default=1000, help="channels of the many-channels rows"
    )
    parser.add_argument(
        "--channels-subs", type=int, default=10, help="subscribers per channel, many channels"
    )
    parser.add_argument(
        "--channels-rate",
        type=float,
        default=20_000.0,
        help="deliveries/s offered to both layouts, many channels",
    )
    parser.add_argument(
        "--channels-seconds", type=float, default=10.0, help="seconds per run, many channels"
    )
    parser.add_argument("--channels-rounds", type=int, default=3, help="rounds, many channels")
    parser.add_argument(
        "--channels-only",
        action="store_true",
        help="run only the many-channels rows (memory, one Redis, Redis Cluster)",
    )
    parser.add_argument("--crowd-subs", type=int, default=15_000, help="subscribers on one worker")
    parser.add_argument("--crowd-base", type=int, default=1000, help="the size it is compared with")
    parser.add_argument(
        "--crowd-rate", type=float, default=5.0, help="broadcasts/s, one-worker light load"
    )
    parser.add_argument(
        "--crowd-count", type=int, default=50, help="broadcasts per one-worker light-load run"
    )
    parser.add_argument("--crowd-rounds", type=int, default=3, help="rounds, one-worker light load")
    parser.add_argument(
        "--crowd-channel-subs",
        type=int,
        default=10,
        help="subscribers per channel, the one-worker light load spread over channels",
    )
    parser.add_argument(
        "--crowd-spread-rate",
        type=float,
        default=300.0,
        help="broadcasts/s (round robin over the channels), the spread light load",
    )
    parser.add_argument(
        "--crowd-spread-count", type=int, default=3000, help="broadcasts per spread light-load run"
    )
    parser.add_argument(
        "--crowd-only",
        action="store_true",
        help="run only the rows of --crowd-subs subscribers on one worker",
    )
    parser.add_argument(
        "--cluster-subs", type=int, default=1000, help="subscribers, Redis Cluster / one Redis"
    )
    parser.add_argument(
        "--cluster-rounds", type=int, default=3, help="runs each, Redis Cluster / one Redis"
    )
    parser.add_argument(
        "--cluster-only",
        action="store_true",
        help="run only the Redis Cluster rows and the Redis commands per publish",
    )
    parser.add_argument(
        "--ops-idle-seconds",
        type=float,
        default=20.0,
        help="seconds of idle subscribers for the Redis commands a worker sends on its own",
    )
    parser.add_argument(
        "--scale-only",
        action="store_true",
        help="run only the scale rows: many channels, one crowded worker, Redis Cluster",
    )
    parser.add_argument(
        "--json-out",
        type=Path,
        help="with --no-write or --quick and an *-only scale flag: also write the parts' JSON here",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; keep docs as they are")
    parser.add_argument(
        "--from-json", type=Path, help="only redraw the table and chart from a results file"
    )
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        markdown = table(results, results["ratios"])
        print(markdown)
        write_doc(markdown)
        write_capacity_doc(results)
        chart(results)
        return
    args.idle_subs = [1000, 2000, 5000]
    if args.quick:
        args.subs, args.deliveries, args.baseline_deliveries = "100,1000", 300_000, 100_000
        args.latency_count, args.publish_rounds, args.idle_subs = 60, 3, [500, 1000]
        args.redis_rounds = args.check_rounds = args.metrics_rounds = 1
        args.servers_rounds, args.servers_count = 1, 300
        args.mounts_rounds, args.mounts_count = 1, 60
        args.archive_big, args.archive_repeats = 10_000, 2
        args.channels_n, args.channels_rate, args.channels_seconds = 100, 10_000.0, 3.0
        args.crowd_subs, args.crowd_count = 3000, 20
        args.crowd_spread_count = 600
        args.channels_rounds = args.crowd_rounds = args.cluster_rounds = 1
    if args.mounts_only:
        mounts_only(args)
        return
    if args.archive_only:
        archive_only(args)
        return
    if args.metrics_only:
        metrics_only(args)
        return
    only = tuple(
        key
        for key, flag in zip(
            SCALE_PARTS, (args.channels_only, args.crowd_only, args.cluster_only), strict=True
        )
        if flag or args.scale_only
    )
    if only:
        scale_only(args, only)
        return
    servers = servers_light_load(build_loadgen(), args)
    servers_markdown = servers_table(servers)
    print(servers_markdown)
    if not args.no_write and not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "servers.json").write_text(json.dumps(servers, indent=2) + "\n")
        write_servers_doc(servers_markdown, servers)
    if args.servers_only:
        return
    results = run(args)
    results["mounts"] = mounts_part(build_loadgen(), args)
    results["archive"] = archive_part(args)
    results.update(scale_parts(build_loadgen(), args, SCALE_PARTS))
    results["params"] = {
        "rate": args.rate,
        "latency_subs": args.latency_subs,
        "window": args.window,
        "deliveries": args.deliveries,
        "baseline_deliveries": args.baseline_deliveries,
        "quick": args.quick,
    }
    r = ratios(results)
    results["ratios"] = r
    markdown = table(results, r)
    print(markdown)
    if args.no_write:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "quick.json" if args.quick else "latest.json"  # the published results stay whole
    (RESULTS / name).write_text(json.dumps(results, indent=2, default=str) + "\n")
    if not args.quick:
        write_doc(markdown)
        write_capacity_doc(results)
        chart(results)


if __name__ == "__main__":
    main()
