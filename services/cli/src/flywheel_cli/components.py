"""The processes of the embedded stack: which module runs each service, on which default port.

This is the only place that knows the list; ``flywheel up`` and ``flywheel status`` read it.
The CLI starts services by module name (``python -m …``) and talks to them over gRPC or HTTP:
it never imports a service's code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    """One service process of the stack."""

    name: str  #: short name shown to users and used for the log file
    module: str  #: runs as ``python -m <module>``
    env_prefix: str  #: its settings' environment prefix
    default_port: int  #: the port from ARCHITECTURE.md; another is picked when it is taken
    protocol: str  #: "grpc" (health via grpc.health.v1) or "http" (GET health_path)
    grpc_service: str | None = None  #: full name of the main gRPC service, for `grpcurl`
    health_path: str = "/health"  #: http only: the path that answers 200 when the service is ready

    @property
    def address_variable(self) -> str:
        """The variable other services read to find this one, e.g. FLYWHEEL_SANDBOX_ADDRESS."""
        return f"{self.env_prefix}ADDRESS"


COMPONENTS: tuple[Component, ...] = (
    Component(
        "sandbox-runner",
        "flywheel_sandbox",
        "FLYWHEEL_SANDBOX_",
        50052,
        "grpc",
        "flywheel.sandbox.v1.SandboxService",
    ),
    Component(
        "trajectory-store",
        "flywheel_trajectory",
        "FLYWHEEL_TRAJECTORY_",
        50053,
        "grpc",
        "flywheel.trajectory.v1.TrajectoryService",
    ),
    Component(
        "dataset-svc",
        "flywheel_dataset",
        "FLYWHEEL_DATASET_",
        50054,
        "grpc",
        "flywheel.dataset.v1.DatasetService",
    ),
    Component(
        "trainer-svc",
        "flywheel_trainer",
        "FLYWHEEL_TRAINER_",
        50055,
        "grpc",
        "flywheel.trainer.v1.TrainerService",
    ),
    Component(
        "orchestrator",
        "flywheel_orchestrator",
        "FLYWHEEL_ORCHESTRATOR_",
        50051,
        "grpc",
        "flywheel.orchestrator.v1.OrchestratorService",
    ),
    Component("model-server", "flywheel_model_server", "FLYWHEEL_MODEL_SERVER_", 8000, "http"),
    # The LiteLLM gateway (and adapter sync in the same process); its key is <state>/gateway.key.
    Component(
        "gateway", "flywheel_gateway", "FLYWHEEL_GATEWAY_", 4000, "http", health_path="/health/readiness"
    ),
)


def by_name(name: str) -> Component:
    for component in COMPONENTS:
        if component.name == name:
            return component
    known = ", ".join(c.name for c in COMPONENTS)
    raise KeyError(f"unknown component {name!r}; known: {known}")
