"""Exporter: serves the daemon's metrics in Prometheus' text format at /metrics, and its volumes' health at /healthz.

A registry of the daemon's own holds the process collector and one collector that reads the daemon's live
objects at each scrape: what mirrors existing state (cache bytes, staging bytes, uploads pending, memory in
flight) is read from it then, never updated on the FUSE or store path. The HTTP server runs in a thread of its
own, bound before the daemon goes to the background so that a taken port stops the mount.
"""
import json
import socket
import threading
import typing
import wsgiref.simple_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

from fsmount.cache.blocks import BlockCache
from fsmount.fs.operations import Operations
from fsmount.metrics.store_requests import Health
from fsmount.staging.area import StagingArea
from fsmount.volumes.uploads import UploadTotals


class Observed(typing.Protocol):
    """What the exporter reads of the daemon (fsmount.daemon.Daemon, which makes it) at each scrape."""
    operations: Operations
    health: Health
    cache: BlockCache | None
    staging: StagingArea | None

    def uploads(self) -> UploadTotals: ...


class Exporter:
    def __init__(self, daemon: Observed, listen: tuple[str, int]):
        """Binds LISTEN (host, port) now: OSError when it is taken."""
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(DaemonCollector(daemon))
        metrics = make_wsgi_app(self.registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO") == "/healthz":
                return _health(daemon, start_response)
            return metrics(environ, start_response)

        host, port = listen
        server_class = _IPv6Server if ":" in host else ThreadingWSGIServer
        self._server = wsgiref.simple_server.make_server(host, port, app, server_class, handler_class=_QuietHandler)
        self._thread: threading.Thread | None = None

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, name="fsmount-metrics", daemon=True)
        self._thread.start()

    def close(self):
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()


def _health(daemon: Observed, start_response) -> list[bytes]:
    """200 while every volume's store answered its last request; else 503 and the volumes that did not, as JSON."""
    failing = daemon.health.failing()
    body = json.dumps({"ok": not failing, "failing": failing}).encode()
    start_response("503 Service Unavailable" if failing else "200 OK",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format, *args):  # a line on stderr per scrape otherwise
        pass


class DaemonCollector:
    """The daemon's metrics, read from its live objects at each scrape (from the server's thread: the event loop's
    counts are copied as they are, and what it adds meanwhile shows at the next scrape)."""

    def __init__(self, daemon: Observed):
        self.daemon = daemon

    def collect(self):
        yield from self._fuse()
        yield from self._stores()
        yield from self._cache()
        yield from self._staging()

    def _fuse(self):
        fuse = self.daemon.operations.requests
        requests = CounterMetricFamily("fsmount_fuse_requests", "FUSE requests answered, by operation", labels=["op"])
        durations = HistogramMetricFamily("fsmount_fuse_request_duration_seconds", "Time to answer a FUSE request",
                                          labels=["op"])
        errors = CounterMetricFamily("fsmount_fuse_errors", "FUSE requests answered with an error", labels=["op", "errno"])
        if fuse is not None:
            for labels, buckets, seconds in fuse.durations.items():
                requests.add_metric(labels, buckets[-1][1])
                durations.add_metric(labels, buckets, seconds)
            for labels, count in fuse.errors.copy().items():
                errors.add_metric(labels, count)
        yield from (requests, durations, errors)

    def _stores(self):
        requests = CounterMetricFamily("fsmount_store_requests", "Requests to a volume's store (each counted once, "
                                       "however often tried), by kind and outcome: ok, or the errno it gave",
                                       labels=["volume", "kind", "status"])
        durations = HistogramMetricFamily("fsmount_store_request_duration_seconds",
                                          "Time of a store request, its retries included", labels=["volume", "kind"])
        transferred = CounterMetricFamily("fsmount_store_bytes", "Object bytes received from (in) and sent to (out) "
                                          "a volume's store", labels=["volume", "direction"])
        retries = CounterMetricFamily("fsmount_store_retries", "Tries of store requests after their first",
                                      labels=["volume"])
        for volume, counted in self.daemon.health.volumes.copy().items():
            for (kind, status), count in counted.counts.copy().items():
                requests.add_metric([volume, kind, status], count)
            for (kind,), buckets, seconds in counted.durations.items():
                durations.add_metric([volume, kind], buckets, seconds)
            transferred.add_metric([volume, "in"], counted.bytes_in)
            transferred.add_metric([volume, "out"], counted.bytes_out)
            retries.add_metric([volume], counted.retries)
        yield from (requests, durations, transferred, retries)

    def _cache(self):
        cache = self.daemon.cache
        if cache is None:
            return
        counts = cache.counts
        yield CounterMetricFamily("fsmount_cache_hits", "Reads of a cache block that fetched nothing: it was on disk, "
                                  "in memory or on its way", value=counts.hits)
        yield CounterMetricFamily("fsmount_cache_misses", "Cache blocks fetched from a store, read-ahead's included",
                                  value=counts.misses)
        yield GaugeMetricFamily("fsmount_cache_bytes", "Bytes in the block cache", value=cache.size)
        yield GaugeMetricFamily("fsmount_cache_limit_bytes", "The block cache's bound (cache.max_size)",
                                value=cache.max_size)
        yield CounterMetricFamily("fsmount_cache_evictions", "Blocks evicted to make room", value=counts.evictions)
        yield CounterMetricFamily("fsmount_readahead_bytes", "Bytes of blocks fetched before a reader asked for them",
                                  value=counts.read_ahead_bytes)
        yield GaugeMetricFamily("fsmount_memory_in_flight_bytes", "Bytes of blocks being fetched, or fetched and "
                                "not yet written to the cache", value=cache.unwritten_bytes)

    def _staging(self):
        staging = self.daemon.staging
        if staging is None:
            return
        uploads = self.daemon.uploads()
        yield GaugeMetricFamily("fsmount_staging_bytes", "Bytes of files staged for upload", value=staging.used)
        yield GaugeMetricFamily("fsmount_uploads_pending", "Files closed and not uploaded yet: waiting, failed or "
                                "on their way", value=uploads.waiting + uploads.uploading)
        yield CounterMetricFamily("fsmount_upload_failures", "Uploads of staged files that failed (each is tried "
                                  "again)", value=uploads.failures)
