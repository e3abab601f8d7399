"""Prometheus metrics of one server, in a registry of its own so that several servers fit in one process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Phase and job durations range from milliseconds (derive) to an hour (a long fine-tuning run).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass
class ServerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.queued_jobs = Gauge("archadapt_queued_jobs", "Jobs in state QUEUED", registry=self.registry)
        self.running_jobs = Gauge("archadapt_running_jobs", "Jobs in state RUNNING", registry=self.registry)
        self.disk_bytes = Gauge("archadapt_data_dir_bytes", "Bytes of every file in the data directory", registry=self.registry)
        self.phase_seconds = Histogram(
            "archadapt_phase_duration_seconds", "Wall time of one phase of a successful job",
            ["phase"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.job_seconds = Histogram(
            "archadapt_job_duration_seconds", "Wall time of one job attempt from start to its final state",
            buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.job_outcomes = Counter(
            "archadapt_job_outcomes", "Jobs that reached a final state, by gRPC status code (OK for SUCCEEDED)",
            ["code"], registry=self.registry,
        )
        self.rpc_outcomes = Counter(
            "archadapt_rpc_outcomes", "Finished RPCs by method and gRPC status code", ["method", "code"], registry=self.registry,
        )
        self._http_server: ThreadingHTTPServer | None = None

    def track_gauges(self, queued: Callable[[], float], running: Callable[[], float], disk_bytes: Callable[[], float]) -> None:
        """Read the gauges from these functions at every scrape."""
        self.queued_jobs.set_function(queued)
        self.running_jobs.set_function(running)
        self.disk_bytes.set_function(disk_bytes)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP on host:port (port 0 picks a free one) and return the bound port."""
        self._http_server, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http_server.server_port

    def stop(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
