"""The benchmark's own pieces still work: its C load client builds and counts every delivery.

The benchmark itself (``benchmarks/run.py``) takes minutes and is never run by the tests; this
keeps its client from rotting, with a few seconds of load on a real server.
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
