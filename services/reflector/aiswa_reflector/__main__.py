"""Run the reflector: ``python -m aiswa_reflector serve|migrate``.

``serve`` runs the gRPC server (reports) and the task consumer together.
``AISWA_REFLECTOR_PREFETCH`` bounds the tasks a worker holds unacknowledged.
``AISWA_REFLECTOR_ENGINE`` selects the metrics engine: ``rust`` (the default, the
aiswa_core extension) or ``python`` (the reference implementation).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from aiswa.reflector.v1 import reflector_pb2_grpc
from aiswa_runtime import (
    Broker,
    Credentials,
    Service,
    ServiceConfig,
    ServiceReporter,
    Upstream,
    command_migrate,
    open_pool,
)
from aiswa_runtime.archive import ArchiveLimits

from ._analysis import analyzer, engine_name
from ._servicer import ReflectorServicer
from ._worker import Worker

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


async def serve(config: ServiceConfig) -> None:
    service = Service(config)
    log.info("metrics engine selected", extra={"engine": engine_name()})
    credentials = await Credentials.from_env(config)
    service.use_credentials(credentials)
    pool = await open_pool(config.require_database(), credentials=credentials.database)
    service.on_shutdown(pool.close)
    broker = Broker(config.require_amqp(), config.service, credentials=credentials.amqp)
    await broker.connect()
    service.on_shutdown(broker.close)
    service.background(ServiceReporter(broker, config.service).run)
    projects = Upstream("projects", config.upstream("projects"),
                        method_timeouts={"/aiswa.projects.v1.ProjectsService/GetProject": 3.0})
    service.on_shutdown(projects.close)
    service.add(
        reflector_pb2_grpc.add_ReflectorServiceServicer_to_server,
        ReflectorServicer(pool, projects),
        "aiswa.reflector.v1.ReflectorService",
    )
    worker = Worker(pool, broker, projects, ArchiveLimits())
    prefetch = int(os.environ.get("AISWA_REFLECTOR_PREFETCH", "1"))
    service.background(lambda: broker.consume(
        "reflector.analyze", worker.handle, prefetch=prefetch, max_attempts=4,
        on_dead_letter=worker.on_dead_letter,
    ))
    await service.run()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aiswa_reflector", description=__doc__)
    parser.add_argument("command", choices=["serve", "migrate"])
    args = parser.parse_args()
    if args.command == "migrate":
        command_migrate(ServiceConfig.from_env("reflector"), MIGRATIONS)
        return
    try:
        # Load the metrics engine before taking tasks, so that a missing Rust core
        # stops the reflector here instead of failing every task.
        analyzer()
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"reflector: cannot start: {exc}") from None
    asyncio.run(serve(ServiceConfig.from_env("reflector")))


if __name__ == "__main__":
    main()
