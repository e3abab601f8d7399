"""Server assembly: the Adaptation service, health checking and reflection on one gRPC server."""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import Checkpoint
from archadapt_client.v1 import archadapt_pb2 as pb
from archadapt_client.v1 import archadapt_pb2_grpc as pb_grpc
from server.request_decoding import RequestLimits
from server.security import ServerSecurity
from server.service import AdaptationService

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Adaptation"].full_name


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float | None = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def create_server(
    address: str,
    checkpoint: Checkpoint,
    device: torch.device,
    limits: RequestLimits = RequestLimits(),
    config: ServingConfig = ServingConfig(),
    max_workers: int = 8,
    security: ServerSecurity = ServerSecurity(),
) -> RunningServer:
    """Build and start a server on `address` ("host:port", port 0 picks a free one).

    `security` selects TLS and the interceptors that authenticate calls (default: plaintext, open).
    """
    options = [
        ("grpc.max_receive_message_length", limits.max_request_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=options,
        interceptors=security.interceptors,
    )
    pb_grpc.add_AdaptationServicer_to_server(AdaptationService(checkpoint, device, limits, config), server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = security.add_port(server, address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    server.start()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health_servicer)
