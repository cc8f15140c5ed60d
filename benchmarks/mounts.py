"""The mounts part of the benchmark: the bare app against a FastAPI mount, and this release
against an earlier one (``--before``, a git ref), light and saturated, in paired rounds.

What users run first is the README's FastAPI mount, so that is measured beside the bare app on
the same uvicorn. ``--before`` serves the same load from another commit of this repository (a
``git archive`` of it under ``benchmarks/build``), bare and, when that commit has it, with its
direct write (uvicorn's ``send`` stepped from the hub) switched off: the rows that decided
whether to keep that fast path. Every variant runs once per round, in a different order each
round, so the machine's drift hits them alike; a ratio is the median of the rounds' ratios.

    python benchmarks/run.py --mounts-only --before e3ab96d --no-write
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["mounts", "mounts_table"]

#: Serves ``channel-asgi serve``'s app with the direct write off (a commit that has one).
_NO_DIRECT_WRITE = (
    "import sys; import channel_asgi.stream as s; s._direct_writer = lambda send: None; "
    "from channel_asgi import cli; sys.exit(cli.main(sys.argv[1:]))"
)


def checkout(bench: ModuleType, ref: str) -> tuple[Path, str]:
    """Unpack ``ref`` of this repository under ``benchmarks/build``; return it and its commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref],
        cwd=bench.ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    where = bench.BUILD / f"ref-{commit}"
    if not (where / "channel_asgi").exists():
        where.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", commit, "channel_asgi"],
            cwd=bench.ROOT,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where, commit


def targets(bench: ModuleType, before: str | None) -> dict[str, Any]:
    """The variants (``run.Target``), by the short name the ratios use."""
    target = bench.Target
    serve = [
        "serve", "--port", "{port}", "--secret", bench.SECRET, "--log-level", "warning",
        "--no-access-log", "--max-connections-per-ip", "0",
    ]  # fmt: skip
    app = "benchmarks.fastapi_mount:app"
    found = {
        "bare": bench.channel_asgi_target("channel_asgi, bare"),
        "fastapi": target(
            "channel_asgi, FastAPI mount",
            ["-m", "uvicorn", app, "--port", "{port}", *bench.UVICORN],
            env={"CHANNEL_ASGI_SECRET": bench.SECRET},
        ),
    }
    if before is not None:
        where, commit = checkout(bench, before)
        # ``-m``/``-c`` put the working directory first on sys.path: the old package wins.
        found["before"] = target(
            f"channel_asgi {commit}, bare", ["-m", "channel_asgi", *serve], cwd=where
        )
        if (where / "channel_asgi" / "stream.py").exists() and "_direct_writer" in (
            where / "channel_asgi" / "stream.py"
        ).read_text():
            found["before_no_direct"] = target(
                f"channel_asgi {commit}, bare, direct write off",
                ["-c", _NO_DIRECT_WRITE, *serve],
                cwd=where,
            )
    return found


def mounts(bench: ModuleType, binary: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Light load (CPU per delivery, latency) and saturated deliveries/s of every variant.

    Args:
        bench: ``benchmarks/run.py`` (its targets and measurements).
        binary: the load client.
        args: the command line.
    """
    variants = targets(bench, args.before)
    latency, saturated, paired = bench.latency, bench.saturated, bench.paired
    light: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    heavy: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    order = list(variants.items())
    subs = args.mounts_subs
    for index in range(args.mounts_rounds):
        turn = order[index % len(order) :] + order[: index % len(order)]
        for name, target in turn:
            light[name].append(latency(binary, target, subs, args.rate, args.mounts_count))
            heavy[name].append(saturated(binary, target, subs, args.deliveries, args.window))
            print(
                f"mounts round {index + 1} {target.name}: "
                f"{light[name][-1]['server_cpu_per_100k']:.2f} CPU s/100k light, "
                f"{heavy[name][-1]['deliveries_per_s']:,.0f}/s saturated",
                file=sys.stderr,
                flush=True,
            )

    def cpu(name: str) -> list[float]:
        return [r["server_cpu_per_100k"] for r in light[name]]

    def rate(name: str) -> list[float]:
        return [r["deliveries_per_s"] for r in heavy[name]]

    def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
        return sorted(runs, key=lambda r: r[key])[len(runs) // 2]

    ratios: dict[str, Any] = {
        "fastapi_light_cpu": paired(cpu("fastapi"), cpu("bare")),
        "fastapi_saturated": paired(rate("fastapi"), rate("bare")),
    }
    if "before" in variants:
        ratios["release_saturated"] = paired(rate("bare"), rate("before"))
        ratios["release_light_cpu"] = paired(cpu("bare"), cpu("before"))
    if "before_no_direct" in variants:
        ratios["no_direct_light_cpu"] = paired(cpu("before_no_direct"), cpu("before"))
        ratios["no_direct_saturated"] = paired(rate("before_no_direct"), rate("before"))
    return {
        "subs": subs,
        "rate": args.rate,
        "rounds": args.mounts_rounds,
        "before": args.before,
        "names": {name: target.name for name, target in variants.items()},
        "light": {name: median_run(runs, "server_cpu_per_100k") for name, runs in light.items()},
        "saturated": {name: median_run(runs, "deliveries_per_s") for name, runs in heavy.items()},
        "ratios": ratios,
        "runs": {"light": light, "saturated": heavy},
    }


_GOALS = [
    ("fastapi_light_cpu", "FastAPI mount / bare app, light-load CPU per delivery", "at most 1.1x"),
    ("fastapi_saturated", "FastAPI mount / bare app, deliveries/s saturated", ""),
    ("release_saturated", "this release / `{before}`, deliveries/s saturated", "at least 0.95x"),
    ("release_light_cpu", "this release / `{before}`, light-load CPU per delivery", ""),
    ("no_direct_light_cpu", "`{before}` direct write off / on, light-load CPU per delivery", ""),
    ("no_direct_saturated", "`{before}` direct write off / on, deliveries/s saturated", ""),
]


def mounts_table(results: dict[str, Any]) -> str:
    """The part's table (markdown): the variants, then the ratios with their goals."""
    names = results["names"]
    lines = [
        f"{results['subs']} subscribers on one uvicorn worker; light load is "
        f"{results['rate']:g} broadcasts/s, saturated is as fast as the server delivers; "
        f"{results['rounds']} rounds, medians.",
        "",
        "| variant | CPU s per 100k deliveries, light | p50 / p99 ms, light "
        "| deliveries/s, saturated |",
        "|---|---:|---:|---:|",
    ]
    for name, label in names.items():
        light, heavy = results["light"][name], results["saturated"][name]
        lines.append(
            f"| {label} | {light['server_cpu_per_100k']:.2f} | "
            f"{light['p50_ms']:.1f} / {light['p99_ms']:.1f} | {heavy['deliveries_per_s']:,.0f} |"
        )
    lines += ["", "| ratio | median | range | goal |", "|---|---:|---:|---|"]
    for key, label, goal in _GOALS:
        ratio = results["ratios"].get(key)
        if ratio is not None:
            lines.append(
                f"| {label.format(before=results['before'])} | {ratio['median']:.2f}x | "
                f"{ratio['low']:.2f}x to {ratio['high']:.2f}x | {goal} |"
            )
    return "\n".join(lines)
