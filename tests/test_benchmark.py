"""The benchmark's own pieces still work: its C load client builds and counts every delivery.

The benchmark itself (``benchmarks/run.py``) takes minutes and is never run by the tests; this
keeps its client from rotting, with a few seconds of load on a real server, and its tables true
to its results (the mount rows' from made-up reports, with and without a direct write).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import ServerProcess
from .helpers import WAIT

ROOT = Path(__file__).resolve().parent.parent
SECRET = "benchmark-test-secret-0123456789abcdef"

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)


def bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def loadgen(server_process: Any) -> Any:
    """Run the load client against a fresh ``channel-asgi serve``; return its JSON report."""
    binary = bench_module().build_loadgen()
    server: ServerProcess = server_process(
        ["-m", "channel_asgi", "serve", "--port", "{port}", "--secret", SECRET, "--no-access-log"]
    )
    port = server.base.rsplit(":", 1)[1]

    def run(*args: str) -> dict[str, Any]:
        command = [str(binary), "--port", port, "--timeout", str(WAIT), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=WAIT * 2)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))

    return run


def test_saturated_fan_out_is_counted_without_loss(loadgen: Any) -> None:
    report = loadgen("--subs", "20", "--publishes", "50", "--window", "8")
    assert report["deliveries"] == 20 * 50
    assert (report["lost"], report["duplicates"], report["publish_errors"]) == (0, 0, 0)
    assert report["deliveries_per_s"] > 0


def test_a_fixed_rate_measures_latency(loadgen: Any) -> None:
    report = loadgen("--subs", "10", "--publishes", "20", "--rate", "50", "--pub-conns", "2")
    assert report["deliveries"] == 10 * 20 and report["lost"] == 0
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]


def test_publish_only_answers_every_publish(loadgen: Any) -> None:
    report = loadgen("--mode", "publish-only", "--duration", "0.5", "--pub-conns", "4")
    assert report["answered"] > 0 and report["publish_errors"] == 0


def test_the_published_table_is_the_one_the_published_results_make() -> None:
    """docs/benchmarks.md shows what benchmarks/results/latest.json holds, goals included."""
    bench = bench_module()
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    markdown = bench.table(results, results["ratios"])
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    assert f"<!-- results:start -->\n{markdown}\n<!-- results:end -->" in doc
    assert "| deliveries lost or repeated, every channel_asgi run | 0 | 0 | yes |" in markdown


def test_a_lost_delivery_in_any_run_fails_its_goal() -> None:
    """A delivery lost in one of the Redis rounds shows in the table, and the goal is not met."""
    bench = bench_module()
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    next(iter(results["redis"].values()))["runs"]["redis"][0]["lost"] = 1
    markdown = bench.table(results, results["ratios"])
    assert "| deliveries lost or repeated, every channel_asgi run | 1 | 0 | no |" in markdown
    assert bench.faults(results, "sse-starlette + broadcaster") == 0


def test_the_servers_table_is_the_one_the_servers_results_make() -> None:
    """docs/servers.md shows what benchmarks/results/servers.json holds, for every server."""
    bench = bench_module()
    results = json.loads((ROOT / "benchmarks" / "results" / "servers.json").read_text())
    markdown = bench.servers_table(results)
    doc = (ROOT / "docs" / "servers.md").read_text()
    assert f"<!-- servers-results:start -->\n{markdown}\n<!-- servers-results:end -->" in doc
    names = [target.name for target, _ in bench.server_targets("redis://unused", "unused")]
    assert list(results["servers"]) == names
    assert all(row["lost"] == 0 for row in results["servers"].values())
    glance = next(line for line in doc.splitlines() if line.startswith("| server CPU per delivery"))
    for name, row in results["servers"].items():  # the summary row quotes the same ratios
        if name != row["against"]:
            assert f"{row['ratio']['median']:.2f}x" in glance, name


def test_every_mount_variant_delivers_everything(server_process: Any) -> None:
    """The mount rows' servers (this checkout, bare and mounted in FastAPI) serve on their paths."""
    bench = bench_module()
    binary = bench.build_loadgen()
    variants = bench.variants_of(bench.checkout_code())
    assert {variant.app for variant in variants} == {"bare", "fastapi"}
    for variant in variants:
        target = variant.target()
        server: ServerProcess = server_process(target.command, env=target.env)
        port = server.base.rsplit(":", 1)[1]
        command = [
            str(binary), "--port", port, *target.client_args, "--timeout", str(WAIT),
            "--subs", "20", "--publishes", "30", "--window", "8",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=WAIT * 2)
        assert result.returncode == 0, (variant.name, result.stderr)
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert (report["deliveries"], report["lost"], report["duplicates"]) == (600, 0, 0)


def mounts_app_module() -> ModuleType:
    path = ROOT / "benchmarks" / "mounts_app.py"
    spec = importlib.util.spec_from_file_location("bench_mounts_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_direct_write_is_turned_off_or_forced_only_where_there_is_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mounts_app = mounts_app_module()
    stream = ModuleType("channel_asgi.stream")
    monkeypatch.setitem(sys.modules, "channel_asgi.stream", stream)
    monkeypatch.setitem(sys.modules, "channel_asgi.fastpath", ModuleType("channel_asgi.fastpath"))
    mounts_app.set_direct_write("off")  # nothing to turn off: the app serves as it is
    with pytest.raises(SystemExit, match="no direct write"):
        mounts_app.set_direct_write("forced")

    stream._direct_writer = lambda send: None  # type: ignore[attr-defined]
    mounts_app.set_direct_write("off")
    assert stream._direct_writer(object()) is None
    mounts_app.set_direct_write("forced")
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(StopIteration):  # the hub steps it: it completes at once here
        stream._direct_writer(send)(b"data: x\n\n").send(None)
    assert sent == [{"type": "http.response.body", "body": b"data: x\n\n", "more_body": True}]


def test_the_fenced_direct_write_is_turned_off_and_never_forced() -> None:
    """This checkout's direct write serves mounted apps as it is: ``off`` only."""
    from channel_asgi import fastpath

    mounts_app = mounts_app_module()
    assert mounts_app.direct_write_kind() == "fenced"
    with pytest.raises(SystemExit, match="no forcing"):
        mounts_app.set_direct_write("forced")
    try:
        mounts_app.set_direct_write("off")
        assert not fastpath.enabled()
    finally:
        fastpath.set_enabled(True)


def test_the_mount_rows_of_a_fenced_direct_write() -> None:
    """Bare and mounted, each with it on and off, and the mount's own with / without ratio."""
    bench = bench_module()
    checkout = bench.Code("checkout", "this checkout (abc1234)", ROOT, "fenced")
    assert [v.name for v in bench.variants_of(checkout)] == [
        "checkout bare on", "checkout bare off", "checkout fastapi mounted",
        "checkout fastapi mounted-off",
    ]  # fmt: skip
    part = mount_results(bench, [checkout])
    names = {ratio["name"]: ratio["median"] for ratio in part["ratios"]}
    assert names["FastAPI mount / bare, light-load CPU per delivery"] == pytest.approx(1.05)
    assert names["without / with direct write, bare, deliveries/s saturated"] == pytest.approx(0.9)
    mounted = "without / with direct write, FastAPI mount, deliveries/s saturated"
    assert names[mounted] == pytest.approx(0.9)


def mount_results(bench: ModuleType, codes: list[Any], lost: str = "") -> dict[str, Any]:
    """The mount rows as ``mounts_part`` makes them, from made-up reports of two rounds.

    Server CPU per delivery: 10 µs bare with the direct write, 15 without, 12 mounted with it
    forced on (deliveries/s: 1000k, 900k, 1100k); a mount without it costs 12 (950k) where the
    code has a direct write, else 11 (1000k). ``lost``: the variant whose runs lose one.
    """
    figures = {
        "on": (10.0, 1e6), "off": (15.0, 9e5), "forced": (12.0, 1.1e6),
        "mounted": (10.5, 1e6), "mounted-off": (15.0, 9e5),
    }  # fmt: skip
    runs = {}
    for code in codes:
        for variant in bench.variants_of(code):
            if variant.app == "fastapi" and variant.direct_write in ("wrapped", "absent"):
                cpu, rate = (12.0, 9.5e5) if code.direct_write != "none" else (11.0, 1e6)
            else:
                cpu, rate = figures.get(variant.direct_write, (10.0, 1e6))
            report = {
                "server_cpu_us_per_delivery": cpu, "deliveries_per_s": rate,
                "p50_ms": 5.0, "p99_ms": 12.0, "lost": int(variant.name == lost), "duplicates": 0,
            }  # fmt: skip
            runs[variant.name] = {"light": [report, report], "saturated": [report, report]}
    params = {"subs": 1000, "rate": 20.0, "publishes": 200, "deliveries": 2_000_000,
              "window": 256, "rounds": 2, "seconds": 60}  # fmt: skip
    return dict(bench.mounts_results(codes, runs, params))


def test_the_mount_goals_say_when_the_code_has_no_direct_write() -> None:
    bench = bench_module()
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    checkout = bench.Code("checkout", "this checkout (abc1234)", ROOT, "none")
    results["mounts"] = mount_results(bench, [checkout])
    markdown = bench.table(results, bench.ratios(results))
    assert (
        "| FastAPI mount / bare, light-load CPU per delivery | 1.10x (rounds 1.10 to 1.10) "
        "| <= 1.1x | yes |" in markdown
    )
    assert (
        "| without / with direct write, bare, light-load CPU per delivery "
        "| n/a: no direct write in this checkout (abc1234) | decides it | — |" in markdown
    )
    assert "| this checkout (abc1234) | bare ChannelApp | none in this code |" in markdown
    assert "### Mounted app and direct write" in markdown
    # a delivery lost in this checkout's mount runs fails the goal (two rounds, both loads)
    results["mounts"] = mount_results(bench, [checkout], lost="checkout fastapi absent")
    markdown = bench.table(results, bench.ratios(results))
    assert "| deliveries lost or repeated, every channel_asgi run | 4 | 0 | no |" in markdown


def test_the_mount_goals_take_the_direct_write_from_the_ref() -> None:
    """With ``--mounts-ref``: the ref's with / without, and this checkout against the ref."""
    bench = bench_module()
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    checkout = bench.Code("checkout", "this checkout (abc1234)", ROOT, "none")
    ref = bench.Code("ref", "e3ab96d", ROOT, "stream")
    results["mounts"] = mount_results(bench, [checkout, ref], lost="ref fastapi forced")
    r = bench.ratios(results)
    markdown = bench.table(results, r)
    lines = {
        "without / with direct write, bare, light-load CPU per delivery (e3ab96d) | 1.50x",
        "without / with direct write, bare, deliveries/s saturated (e3ab96d) | 0.90x",
        "bare, this checkout / e3ab96d, deliveries/s saturated | 1.00x (rounds 1.00 to 1.00) "
        "| >= 0.95x | yes |",
    }
    for line in lines:
        assert f"| {line}" in markdown
    assert "| FastAPI mount / bare, light-load CPU per delivery | e3ab96d | 1.20x" in markdown
    forced = "FastAPI mount with the direct write forced on / bare, light-load CPU per delivery"
    assert r["mounts"][f"{forced} (ref)"]["median"] == pytest.approx(1.2)
    # the ref's lost delivery is in its own row, not in this checkout's goal
    assert "| deliveries lost or repeated, every channel_asgi run | 0 | 0 | yes |" in markdown
    assert "| forced on through Starlette's `send` wrappers |" in markdown


def test_the_metrics_rows_are_goals_of_the_table() -> None:
    """Metrics on / off: deliveries/s and light-load CPU, each with its goal."""
    bench = bench_module()
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    ratio = {"median": 0.97, "low": 0.95, "high": 0.99}
    results["metrics"] = {
        "subs": 1000,
        "fan_out": {"ratio": ratio, "runs": {"on": [], "off": []}},
        "light_cpu": {
            "on": [1.0],
            "off": [1.0],
            "ratio": {"median": 1.07, "low": 1.0, "high": 1.1},
        },
    }
    markdown = bench.table(results, bench.ratios(results))
    assert (
        "| metrics on / off, deliveries/s at 1000 subscribers | 0.97x (rounds 0.95 to 0.99) "
        "| >= 0.95x | yes |" in markdown
    )
    assert (
        "| metrics on / off, server CPU per delivery, light load | 1.07x (rounds 1.00 to 1.10) "
        "| <= 1.05x | no |" in markdown
    )


def archive_results(memory: tuple[float, float], redis: tuple[float, float]) -> dict[str, Any]:
    """The archive part as ``archive_part`` makes it: (small, big) median µs per storage."""

    def storage(small: float, big: float) -> dict[str, Any]:
        return {
            "small": {"median_us": small, "low_us": small - 2, "high_us": small + 5, "reads": 45},
            "big": {"median_us": big, "low_us": big - 2, "high_us": big + 5, "reads": 45},
            "fill_s": {"small": 0.1, "big": 5.0},
            "ratio": big / small,
        }

    params = {"small": 1000, "big": 100_000, "page": 200, "offsets": 9, "repeats": 5}
    return {
        "params": {**params, "seconds": 9},
        "storages": {"memory": storage(*memory), "redis": storage(*redis)},
    }


def test_the_archive_rows_say_the_ratio_and_whether_it_meets_the_goal() -> None:
    """One row per storage with both medians and their ratio, in the table and the goals."""
    bench = bench_module()
    part = archive_results(memory=(20.0, 24.0), redis=(400.0, 1000.0))
    markdown = bench.archive_bench().archive_table(part)
    assert markdown.startswith("### Archive range reads\n")
    assert "| MemoryStorage | 20 (18 to 25) | 24 (22 to 29) | 1.20x | <= 2x | yes |" in markdown
    assert (
        "| RedisStorage | 400 (398 to 405) | 1000 (998 to 1005) | 2.50x | <= 2x | no |" in markdown
    )
    assert "apart from the rows above" not in markdown

    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    results["archive"] = {**part, "separate": "2026-01-02"}
    full = bench.table(results, bench.ratios(results))
    assert (
        "| archive page, 100,000 / 1,000 broadcasts (MemoryStorage) | 1.20x | <= 2x | yes |" in full
    )
    assert (
        "| archive page, 100,000 / 1,000 broadcasts (RedisStorage) | 2.50x | <= 2x | no |" in full
    )
    assert "Measured by `benchmarks/run.py --archive-only` on 2026-01-02" in full
    assert markdown.split("\n", 2)[2] in full  # the section, after its dated line


# The scale rows (issue 18): many channels, one crowded worker, Redis Cluster against one Redis.

needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="no redis-server",
)


def test_subscriptions_spread_over_channels_get_their_channel_only(loadgen: Any) -> None:
    """``--channels``: each subscription counts its channel's broadcasts, published round robin."""
    report = loadgen("--subs", "15", "--channels", "5", "--publishes", "23", "--window", "4")
    # channel c gets the broadcasts n with n % 5 == c: 5, 5, 5, 4, 4 of them, 3 subscribers each
    assert report["deliveries"] == 3 * 23 and report["channels"] == 5
    assert (report["lost"], report["duplicates"], report["publish_errors"]) == (0, 0, 0)
    paced = loadgen("--subs", "10", "--channels", "10", "--publishes", "30", "--rate", "200")
    assert paced["deliveries"] == 30 and paced["lost"] == 0
    publish_only = loadgen("--mode", "publish-only", "--channels", "3", "--duration", "0.3")
    assert publish_only["answered"] > 0 and publish_only["publish_errors"] == 0
    single = loadgen("--subs", "2", "--publishes", "3", "--window", "2")
    assert "channels" not in single  # one channel: the report of before


def scale_args(**changes: Any) -> Any:
    """The command line of ``benchmarks/run.py`` at tiny sizes, for the scale parts."""
    import argparse

    values = {
        "no_redis": False, "deliveries": 2000, "window": 8,
        "channels_n": 4, "channels_subs": 2, "channels_rate": 400.0, "channels_seconds": 0.2,
        "channels_rounds": 1, "crowd_subs": 30, "crowd_base": 10, "crowd_rate": 50.0,
        "crowd_count": 5, "crowd_rounds": 1, "crowd_channel_subs": 5, "crowd_spread_rate": 100.0,
        "crowd_spread_count": 12, "cluster_subs": 20, "cluster_rounds": 1,
        "ops_idle_seconds": 0.5,
    }  # fmt: skip
    return argparse.Namespace(**{**values, **changes})


def test_the_crowd_part_runs_at_a_tiny_size() -> None:
    """Idle connections and the light load at two sizes, rendered with their goals."""
    bench = bench_module()
    part = bench.crowd_part(bench.build_loadgen(), scale_args())
    assert set(part["sizes"]) == {"10", "30"}
    assert part["sizes"]["30"]["light"]["lost"] == 0
    assert part["sizes"]["30"]["light"]["runs"][0]["deliveries"] == 30 * 5
    # spread over channels of 5: 12 broadcasts round robin, each to the 5 of its channel
    assert part["sizes"]["30"]["spread"]["lost"] == 0
    assert part["sizes"]["30"]["spread"]["runs"][0]["deliveries"] == 12 * 5
    assert "### 30 subscribers on one worker" in bench.crowd_table(part)
    one, spread = bench.scale_goals({"crowd": part})
    assert one[0] == "p99 at 30 / 10 subscribers, one worker, light load"
    assert spread[0] == "p99 at 30 / 10 subscribers, one worker, light load, channels of 5"


@needs_redis_server
def test_the_channels_and_cluster_parts_run_at_a_tiny_size() -> None:
    """Many channels on memory and a private Redis; Redis commands per publish counted."""
    bench = bench_module()
    binary, args = bench.build_loadgen(), scale_args()
    with bench.scale_storages(args) as storages:
        assert {"memory", "redis"} <= set(storages.targets)
        channels = bench.channels_part(binary, args, storages)
        cluster = bench.cluster_part(binary, args, storages)
    for row in channels["storages"].values():
        assert row["many"]["lost"] == row["one"]["lost"] == 0
        # 400 deliveries/s for 0.2 s: 40 broadcasts to 4 channels of 2, or 10 to one of 8
        assert row["many"]["runs"][0]["deliveries"] == row["one"]["runs"][0]["deliveries"] == 80
    ops = cluster["ops"]["redis"]
    assert ops["per_publish_total"] > 0 and ops["lost"] == 0
    if "cluster" not in storages.targets:  # the code has no --redis-cluster yet
        assert channels["skipped"]["cluster"] == cluster["skipped"]["cluster"]
        assert "fan_out" not in cluster
    results = {"channels": channels, "cluster": cluster}
    goals = {name: value for name, value, _, _ in bench.scale_goals(results)}
    assert "4 channels x 2 / 1 x 8, deliveries/s (MemoryStorage)" in goals
    text = bench.cluster_table(cluster)
    assert "| RedisStorage, one Redis |" in text and "commands per publish" in text
    assert "### Many channels" in bench.channels_table(channels)


@needs_redis_server
def test_a_private_cluster_comes_up_with_three_masters() -> None:
    """The harness's own cluster reaches ``cluster_state:ok``; its nodes' commands are counted."""
    bench = bench_module()
    with bench.redis_nodes_module().redis_nodes(cluster=True) as nodes:
        assert len(nodes.ports) == 3 and all(port < 55536 for port in nodes.ports)
        for port in nodes.ports:
            assert "cluster_state:ok" in nodes.cli(port, "cluster", "info")
        nodes.cli(nodes.ports[0], "-c", "set", "{bench}key", "1")
        assert nodes.command_calls()["set"] == 1
    missing = bench.cluster_missing()
    assert missing in (None, bench.NO_CLUSTER)


NO_CLUSTER = "n/a: `channel-asgi serve` has no `--redis-cluster` in this checkout"


def made_up_scale(lost: int = 0) -> dict[str, Any]:
    """The three scale parts as they come out of a run, with made-up figures."""

    def runs(rate: float, cpu: float, p99: float) -> dict[str, Any]:
        report = {"deliveries_per_s": rate, "server_cpu_us_per_delivery": cpu, "p50_ms": p99 / 2,
                  "p99_ms": p99, "lost": lost, "duplicates": 0}  # fmt: skip
        return {"deliveries_per_s": rate, "low": rate, "high": rate,
                "server_cpu_us_per_delivery": cpu, "p50_ms": p99 / 2, "p99_ms": p99,
                "lost": lost, "runs": [report]}  # fmt: skip

    def ratio(value: float) -> dict[str, float]:
        return {"median": value, "low": value, "high": value}

    channels = {
        "params": {"channels": 1000, "subs_per_channel": 10, "subs": 10_000,
                   "deliveries_rate": 20_000.0, "seconds": 10.0,
                   "publishes": {"many": 20_000, "one": 20},
                   "publish_rates": {"many": 2000.0, "one": 2.0}, "rounds": 3, "took_s": 99},
        "storages": {
            "memory": {"many": runs(19_000, 20.0, 9.0), "one": runs(20_500, 12.0, 30.0),
                       "ratio": ratio(0.93), "cpu_ratio": ratio(1.6)},
            "redis": {"many": runs(12_000, 40.0, 90.0), "one": runs(20_000, 14.0, 30.0),
                      "ratio": ratio(0.6), "cpu_ratio": ratio(2.9)},
        },
        "skipped": {"cluster": NO_CLUSTER},
    }  # fmt: skip
    idle = {"connect_s": 7.5, "rss_before_kib": 1, "rss_after_kib": 2}
    crowd = {
        "params": {"base": 1000, "subs": 15_000, "rate": 5.0, "publishes": 50, "rounds": 3,
                   "took_s": 99},
        "sizes": {
            "1000": {"idle": {**idle, "subs": 1000, "kib_per_connection": 15.0},
                     "light": runs(5000, 12.0, 25.0)},
            "15000": {"idle": {**idle, "subs": 15_000, "kib_per_connection": 16.5},
                      "light": runs(75_000, 10.0, 40.0)},
        },
        "p99_ratio": ratio(1.6),
    }  # fmt: skip
    ops = {"subs": 10, "counts": [100, 600], "per_publish": {"evalsha": 0.25, "xadd": 1.0},
           "per_publish_total": 1.25, "per_subscription": {"evalsha": 2.0},
           "per_subscription_total": 2.0, "idle_subs": 10, "idle_per_s": 0.3,
           "idle_commands": {}, "lost": 0}  # fmt: skip
    cluster = {
        "subs": 1000, "rounds": 3, "skipped": {}, "took_s": 99,
        "ops": {"redis": ops, "cluster": ops},
        "fan_out": {"cluster": runs(1.5e6, 1.0, 30.0), "redis": runs(1.8e6, 1.0, 30.0),
                    "ratio": ratio(0.83),
                    "runs": {"cluster": runs(1, 1, 1)["runs"], "redis": runs(1, 1, 1)["runs"]}},
    }  # fmt: skip
    return {"channels": channels, "crowd": crowd, "cluster": cluster}


def test_the_scale_goals_say_met_or_not_and_why_a_row_is_missing() -> None:
    """Each scale goal is in the table with yes / no, a skipped storage with its reason."""
    bench = bench_module()
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    results.update(made_up_scale())
    markdown = bench.table(results, bench.ratios(results))
    for line in (
        "| 1,000 channels x 10 / 1 x 10,000, deliveries/s (MemoryStorage) | 0.93x (rounds 0.93 "
        "to 0.93) | >= 0.7x | yes |",
        "| 1,000 channels x 10 / 1 x 10,000, deliveries/s (RedisStorage, one Redis) | 0.60x "
        "(rounds 0.60 to 0.60) | >= 0.7x | no |",
        "| 1,000 channels x 10 / 1 x 10,000, deliveries/s (RedisStorage, Redis Cluster (3 "
        "masters)) | n/a: `channel-asgi serve` has no `--redis-cluster` in this checkout "
        "| >= 0.7x | — |",
        "| p99 at 15,000 / 1,000 subscribers, one worker, light load | 1.60x (rounds 1.60 to "
        "1.60) | <= 2x | yes |",
        "| KiB per idle subscriber at 15,000 on one worker | 16.5 KiB | <= 16 KiB | no |",
        "| Redis Cluster / one Redis, deliveries/s at 1,000 subscribers | 0.83x (rounds 0.83 "
        "to 0.83) | >= 0.8x | yes |",
        "| deliveries lost or repeated, every channel_asgi run | 0 | 0 | yes |",
    ):
        assert line in markdown, line
    for heading in ("### Many channels", "### 15,000 subscribers on one worker",
                    "### Redis Cluster and Redis commands"):  # fmt: skip
        assert f"\n{heading}\n" in markdown
    results.update(made_up_scale(lost=1))  # a delivery lost in a scale run fails the goal
    markdown = bench.table(results, bench.ratios(results))
    assert "| deliveries lost or repeated, every channel_asgi run | 0 | 0 | yes |" not in markdown


def test_the_capacity_figures_are_the_ones_the_published_results_make() -> None:
    """docs/capacity.md shows what latest.json holds, and says which figures the full run adds."""
    bench = bench_module()
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    figures = bench.capacity_table(results)
    doc = (ROOT / "docs" / "capacity.md").read_text()
    assert f"<!-- capacity:start -->\n{figures}\n<!-- capacity:end -->" in doc
    results.update(made_up_scale())
    full = bench.capacity_table(results)
    assert bench.FULL_RUN not in full.replace("n/a", "")  # every figure measured
    assert "16.5 KiB at 15,000 subscribers" in full
    assert (
        "Redis commands per publish (RedisStorage, one Redis) | 1.2 (evalsha 0.2, xadd 1.0)" in full
    )
