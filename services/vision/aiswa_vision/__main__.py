"""Run the vision service: ``python -m aiswa_vision serve|migrate``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from aiswa.vision.v1 import vision_pb2_grpc
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

from ._service import RoadmapBuilder, VisionServicer

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
    reflector = Upstream("reflector", config.upstream("reflector"))
    projects = Upstream("projects", config.upstream("projects"))
    service.on_shutdown(reflector.close)
    service.on_shutdown(projects.close)
    service.add(
        vision_pb2_grpc.add_VisionServiceServicer_to_server,
        VisionServicer(pool, projects),
        "aiswa.vision.v1.VisionService",
    )
    builder = RoadmapBuilder(pool, broker, reflector)
    service.background(lambda: broker.consume("vision.analysis", builder.handle, prefetch=2))
    await service.run()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aiswa_vision", description=__doc__)
    parser.add_argument("command", choices=["serve", "migrate"])
    args = parser.parse_args()
    config = ServiceConfig.from_env("vision")
    if args.command == "serve":
        asyncio.run(serve(config))
    else:
        command_migrate(config, MIGRATIONS)


if __name__ == "__main__":
    main()
