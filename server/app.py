"""Server assembly: the Adaptation service, its job machinery, health checking, reflection and metrics."""

from __future__ import annotations

import logging
import shutil
import tempfile
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import Checkpoint
from archadapt_client.v1 import archadapt_pb2 as pb
from server.job_store import JobStore
from server.jobs import JobLimits, JobManager
from server.metrics import ServerMetrics
from server.request_decoding import RequestLimits
from server.request_parsing import add_adaptation_servicer
from server.security import ServerSecurity
from server.service import AdaptationService

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Adaptation"].full_name


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    jobs: JobManager
    store: JobStore
    metrics: ServerMetrics
    metrics_port: int | None = None
    temporary_data_dir: Path | None = field(default=None, repr=False)

    def drain(self, timeout: float = 10.0) -> None:
        """Report NOT_SERVING, accept no new work and interrupt running jobs, which stay queued."""
        self.health.enter_graceful_shutdown()
        self.jobs.drain(timeout)

    def stop(self, grace: float | None = 5.0) -> None:
        """Drain, then stop the gRPC server; calls still open after `grace` seconds are cancelled."""
        self.drain()
        self.server.stop(grace).wait()
        self.metrics.stop()
        self.store.close()
        if self.temporary_data_dir is not None:
            shutil.rmtree(self.temporary_data_dir, ignore_errors=True)


def create_server(
    address: str,
    checkpoint: Checkpoint,
    device: torch.device,
    limits: RequestLimits = RequestLimits(),
    config: ServingConfig = ServingConfig(),
    max_workers: int = 32,
    *,
    security: ServerSecurity = ServerSecurity(),
    data_dir: Path | None = None,
    job_limits: JobLimits = JobLimits(),
    metrics_address: tuple[str, int] | None = None,
) -> RunningServer:
    """Build and start a server on `address` ("host:port", port 0 picks a free one).

    `security` selects TLS and the interceptors that authenticate calls (default: plaintext,
    open). Jobs, datasets and models live in `data_dir`; without one, a temporary directory is
    used and deleted at stop. Each streaming call (Adapt, WatchJob) uses one of the
    `max_workers` threads while it is open. `metrics_address` (host, port) serves Prometheus
    metrics over HTTP.
    """
    temporary = None
    if data_dir is None:
        temporary = data_dir = Path(tempfile.mkdtemp(prefix="archadapt-data-"))
    store = JobStore(data_dir)
    metrics = ServerMetrics()
    jobs = JobManager(store, checkpoint, device, limits, config, job_limits, metrics)

    options = [
        ("grpc.max_receive_message_length", limits.max_request_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=options,
        interceptors=security.interceptors,
    )
    add_adaptation_servicer(AdaptationService(jobs, metrics), server, SERVICE_NAME)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = security.add_port(server, address)
    if port == 0:
        store.close()
        raise OSError(f"cannot bind the gRPC server to {address}")
    jobs.start()
    metrics_port = metrics.serve(*metrics_address) if metrics_address is not None else None
    server.start()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server=server, port=port, health=health_servicer, jobs=jobs, store=store, metrics=metrics,
        metrics_port=metrics_port, temporary_data_dir=temporary,
    )
