"""Run the projects service: ``python -m aiswa_projects serve|migrate``."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from aiswa.projects.v1 import projects_pb2_grpc
from aiswa_runtime import (
    Broker,
    Credentials,
    Service,
    ServiceConfig,
    ServiceReporter,
    command_migrate,
    open_pool,
)
from aiswa_runtime.archive import ArchiveLimits

from ._runs import apply_event, republish_pending
from ._servicer import ProjectsServicer

MIGRATIONS = Path(__file__).parent / "migrations"


async def serve(config: ServiceConfig) -> None:
    service = Service(config)
    credentials = await Credentials.from_env(config)
    service.use_credentials(credentials)
    pool = await open_pool(config.require_database(), credentials=credentials.database)
    service.on_shutdown(pool.close)
    broker = Broker(config.require_amqp(), config.service, credentials=credentials.amqp)
    await broker.connect()
    service.on_shutdown(broker.close)
    service.background(ServiceReporter(broker, config.service).run)
    archive_dir = Path(os.environ.get("AISWA_ARCHIVE_DIR") or config.state_dir / "archives")
    service.add(
        projects_pb2_grpc.add_ProjectsServiceServicer_to_server,
        ProjectsServicer(pool, broker, archive_dir, ArchiveLimits()),
        "aiswa.projects.v1.ProjectsService",
    )

    async def on_event(payload: dict[str, Any], message: AbstractIncomingMessage) -> None:
        await apply_event(pool, message.routing_key or "", payload)

    service.background(lambda: broker.consume("projects.events", on_event, prefetch=16))
    service.background(lambda: republish_pending(broker, pool))
    await service.run()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aiswa_projects", description=__doc__)
    parser.add_argument("command", choices=["serve", "migrate"])
    args = parser.parse_args()
    config = ServiceConfig.from_env("projects")
    if args.command == "serve":
        asyncio.run(serve(config))
    else:
        command_migrate(config, MIGRATIONS)


if __name__ == "__main__":
    main()
