"""What the app counts (:class:`Tally`), and how ``GET {prefix}/metrics`` serves it (Prometheus).

The hot path stays cheap. Nothing is counted per delivery: the hub adds the number of mailboxes
an event went to to one plain ``int`` per dispatch (``Hub.delivered``), and the rest (publishes,
refusals, resumes, failures) is one ``dict`` increment per request or per event in
:class:`Tally`. Connections and channels are not counted at all: the hub's own maps are read
when the metrics are collected. Only ``metrics=True`` times publishes (the histogram).

prometheus_client is imported only by :class:`PrometheusMetrics`, which ``metrics=True``
builds; the ``metrics`` extra installs it. Its metric objects live in a registry of the app's
own, so several apps in one process (tests, two mounts) never clash, and are brought up to date
from the tally when scraped. In prometheus_client's multi-process mode (``PROMETHEUS_MULTIPROC_DIR``
set, as ``channel-asgi serve --workers N --metrics`` and gunicorn need) the values live in that
directory's files, one set per worker, and a scrape must see every worker's: so each worker
also writes its tally to its files once a second (:data:`FLUSH_INTERVAL`), the scrape adds up
every worker's files (``MultiProcessCollector``), and the gauges are ``livesum`` (the sum over
live workers; a worker that stops sets its own to zero, and the files of workers that died are
dropped when a scrape finds their process gone).
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import anyio

from .connection import Framing
from .errors import ChannelError, http_error
from .http import Headers, Receive, Scope, Send
from .storage.base import StorageChannelClosed, StorageError, StorageNoReply, StorageUserBanned

if TYPE_CHECKING:
    from .hub import Hub
    from .webhooks import Bridge

__all__ = [
    "FLUSH_INTERVAL",
    "UNKNOWN_TYPE",
    "MetricsRoute",
    "PrometheusMetrics",
    "Tally",
    "multiprocess_dir",
]

#: The ``type`` label of a publish refused before its body was read.
UNKNOWN_TYPE: Final = "unknown"
#: Seconds between two writes of a worker's tally to the multi-process files.
FLUSH_INTERVAL: Final = 1.0
#: Buckets of ``channel_asgi_publish_seconds``: 0.5 ms to 10 s.
PUBLISH_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_TRANSPORTS: Final = {Framing.SSE: "sse", Framing.TEXT: "websocket"}
_LIVE_GAUGE_FILE: Final = re.compile(r"gauge_live\w+?_(\d+)\.db$")

Key = tuple[Any, ...]  # the counter's name, then its label values


class Tally:
    """The app's counts, as plain integers, for the metrics to read when they are collected.

    Always there (counting is a ``dict`` increment); ``metrics=True`` reads it. Keys are the
    counter's short name followed by its label values.

    Attributes:
        counts: key -> how many so far.
        observe_publish: records a publish's duration in seconds (set by the metrics), or None.
    """

    __slots__ = ("counts", "observe_publish")

    def __init__(self) -> None:
        self.counts: dict[Key, int] = {}
        self.observe_publish: Callable[[float], None] | None = None

    def add(self, *key: Any) -> None:
        """Count one ``key`` (the counter's name, then its label values)."""
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def start(self) -> float:
        """Return the time a publish starts, when publishes are timed (else 0)."""
        return time.perf_counter() if self.observe_publish is not None else 0.0

    def published(self, kind: str, code: int, started: float = 0.0) -> None:
        """Count a publish answered with ``code``; time it when it got as far as acting."""
        counts = self.counts
        key = ("publishes", kind, code)
        counts[key] = counts.get(key, 0) + 1
        observe = self.observe_publish
        if observe is not None and started and (code == 200 or code >= 500):
            observe(time.perf_counter() - started)

    def refused(self, kind: str, exc: BaseException, started: float = 0.0) -> int:
        """Count a publish that raised ``exc``; return the status it is answered with."""
        status = status_of(exc)
        self.published(kind, status, started)
        return status

    def storage_error(self, exc: BaseException) -> None:
        """Count ``exc`` if it is a storage failure (an outage, or a change with no reply)."""
        if isinstance(exc, StorageNoReply):
            self.add("storage_errors", "no_reply")
        elif isinstance(exc, StorageError) and not isinstance(
            exc, (StorageChannelClosed, StorageUserBanned)
        ):
            self.add("storage_errors", "unreachable")  # a bare StorageError is a 503 too


def status_of(exc: BaseException) -> int:
    """Return the HTTP status ``exc`` is answered with (500 for an unexpected error)."""
    if isinstance(exc, (ChannelError, StorageError)):
        return http_error(exc).status
    return 500


def multiprocess_dir() -> str | None:
    """Return prometheus_client's multi-process directory, when that mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class PrometheusMetrics:
    """The app's metrics as prometheus_client objects, brought up to date from the counts.

    Args:
        tally: the app's counts.
        hub: this process's connections (the gauges are read from it).
        bridges: the app's bridges (their counts of sent, failed and dropped events).

    Raises:
        ImportError: prometheus_client is not installed (``pip install "channel-asgi[metrics]"``).
    """

    def __init__(self, tally: Tally, hub: Hub, bridges: Iterable[Bridge]) -> None:
        try:
            import prometheus_client
        except ImportError:
            raise ImportError(
                'metrics=True needs prometheus_client: pip install "channel-asgi[metrics]"'
            ) from None
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._tally = tally
        self._hub = hub
        self._bridges = bridges
        self.content_type: Final = prometheus_client.CONTENT_TYPE_LATEST
        from prometheus_client import values

        #: The multi-process directory, or None: then the metrics live in :attr:`registry`.
        #: The mode is the one prometheus_client chose when it was first imported in this
        #: process (the variable set later changes nothing there).
        in_files = getattr(values, "ValueClass", values.MutexValue) is not values.MutexValue
        self.directory = multiprocess_dir() if in_files else None
        #: The app's own registry (None in multi-process mode, where the files are the truth).
        self.registry = None if self.directory else CollectorRegistry(auto_describe=True)
        registry = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(f"channel_asgi_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Gauge(
                f"channel_asgi_{name}", doc, labels, registry=registry, multiprocess_mode="livesum"
            )

        self._connections = gauge(
            "connections", "Open subscriber connections in this process", ("transport",)
        )
        self._channels = gauge("channels", "Channels with subscriber connections in this process")
        self._counters: dict[str, Any] = {
            "publishes": counter(
                "publishes",
                "Publishes answered, by envelope type and HTTP status (refused ones included)",
                ("type", "code"),
            ),
            "deliveries": counter(
                "deliveries", "Events queued to connections (and server-side subscribers)"
            ),
            "slow_consumer_disconnects": counter(
                "slow_consumer_disconnects",
                "Connections closed because they did not read fast enough (max_buffer_bytes)",
            ),
            "storage_errors": counter(
                "storage_errors",
                "Storage calls that failed: unreachable (nothing applied), no_reply (maybe)",
                ("error",),
            ),
            "subscribes": counter(
                "subscribes",
                "Subscriber connections asked for, by transport and HTTP status",
                ("transport", "code"),
            ),
            "resumes": counter(
                "resumes",
                "Reconnections with a last event id, by whether everything missed was replayed",
                ("recovered",),
            ),
            "rate_limited": counter(
                "rate_limited",
                "Requests refused with 429, by limit (user, ip, slow_mode, connections)",
                ("limit",),
            ),
            "hook_failures": counter(
                "hook_failures", "Hooks that raised or ran out of time", ("hook", "reason")
            ),
            "webhooks": counter(
                "webhooks",
                "Webhook calls, by outcome (2xx..5xx, unreachable, timeout)",
                ("outcome",),
            ),
            "bridge_events": counter(
                "bridge_events", "Broadcasts bridges handled: sent, failed, dropped", ("outcome",)
            ),
        }
        histogram = Histogram(
            "channel_asgi_publish_seconds",
            "Seconds from a publish's checks to its reply (accepted, or failed at the storage)",
            buckets=PUBLISH_BUCKETS,
            registry=registry,
        )
        tally.observe_publish = histogram.observe
        self._flushed: dict[Key, int] = {}
        # The series an alert watches exist from the start, at zero.
        for transport in _TRANSPORTS.values():
            self._connections.labels(transport)
        for key in [
            ("storage_errors", "unreachable"),
            ("storage_errors", "no_reply"),
            ("resumes", "true"),
            ("resumes", "false"),
            *(("rate_limited", limit) for limit in ("user", "ip", "slow_mode", "connections")),
            *(("bridge_events", outcome) for outcome in ("sent", "failed", "dropped")),
            *(
                ("hook_failures", hook, reason)
                for hook in ("on_connect", "on_disconnect", "on_publish")
                for reason in ("error", "timeout")
            ),
        ]:
            self._counters[key[0]].labels(*key[1:])

    def flush(self) -> None:
        """Bring the metric objects up to date with the counts and the hub (cheap: a few dicts)."""
        by_transport, channels = self._hub.census()
        by_transport[Framing.SSE] += by_transport[Framing.MULTI]  # SSE, of several channels
        by_transport[Framing.TEXT] += by_transport[Framing.TEXT_MULTI]  # and WebSocket
        for framing, transport in _TRANSPORTS.items():
            self._connections.labels(transport).set(by_transport[framing])
        self._channels.set(channels)
        counts = dict(self._tally.counts)
        counts[("deliveries",)] = self._hub.delivered
        for bridge in self._bridges:
            for outcome in ("sent", "failed", "dropped"):
                key = ("bridge_events", outcome)
                counts[key] = counts.get(key, 0) + getattr(bridge, outcome)
        flushed = self._flushed
        for key, value in counts.items():
            delta = value - flushed.get(key, 0)
            if delta <= 0:
                continue
            flushed[key] = value
            metric = self._counters[key[0]]
            if len(key) > 1:
                metric = metric.labels(*(str(label).lower() for label in key[1:]))
            metric.inc(delta)

    def stop(self) -> None:
        """Write the last counts; in multi-process mode, take this worker out of the gauges."""
        self.flush()
        if self.directory:
            for transport in _TRANSPORTS.values():
                self._connections.labels(transport).set(0)
            self._channels.set(0)

    async def render(self) -> bytes:
        """Return the Prometheus text exposition of every metric (of every worker)."""
        self.flush()
        if self.directory:  # every worker's files: read off the event loop
            return await anyio.to_thread.run_sync(_render_directory, self.directory)
        from prometheus_client import generate_latest

        assert self.registry is not None  # set whenever there is no directory
        return generate_latest(self.registry)


def _render_directory(directory: str) -> bytes:
    """Add up the files of every worker (dropping those of workers that are gone)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        found = _LIVE_GAUGE_FILE.search(path)
        if found is not None and not _alive(int(found[1])):
            multiprocess.mark_process_dead(int(found[1]), directory)  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class MetricsRoute:
    """Serve ``GET {prefix}/metrics``: the Prometheus text exposition.

    Args:
        metrics: the app's metrics.
    """

    methods: Final = ("GET", "OPTIONS")

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    async def serve(
        self,
        scope: Scope,
        headers: Headers,
        receive: Receive,
        send: Send,
        channel: str,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Send every metric, as Prometheus scrapes them."""
        metrics = self._metrics
        body = await metrics.render()
        head = [
            (b"content-type", metrics.content_type.encode()),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-store"),
            *reply_headers,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": body})
