"""Run the users service: ``python -m aiswa_users serve|migrate|bootstrap-admin``."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from aiswa.users.v1 import users_pb2_grpc
from aiswa_runtime import (
    Broker,
    Credentials,
    Service,
    ServiceConfig,
    ServiceReporter,
    command_database_url,
    command_migrate,
    open_pool,
)

from ._servicer import UsersServicer
from ._tokens import SigningKey, new_api_key

MIGRATIONS = Path(__file__).parent / "migrations"


def _signing_key(config: ServiceConfig) -> SigningKey:
    path = Path(os.environ.get("AISWA_USERS_SIGNING_KEY")
                or config.state_dir / "secrets" / "users-signing-key.pem")
    return SigningKey.load_or_create(path)


async def serve(config: ServiceConfig) -> None:
    service = Service(config)
    key = _signing_key(config)
    credentials = await Credentials.from_env(config)
    service.use_credentials(credentials)
    pool = await open_pool(config.require_database(), credentials=credentials.database)
    service.on_shutdown(pool.close)
    # Users consumes no queue; its broker connection only carries the events
    # that the dashboard shows.
    broker = Broker(config.require_amqp(), config.service, credentials=credentials.amqp)
    await broker.connect()
    service.on_shutdown(broker.close)
    service.background(ServiceReporter(broker, config.service).run)
    ttl = int(os.environ.get("AISWA_TOKEN_TTL_SECONDS", "900"))
    service.add(
        users_pb2_grpc.add_UsersServiceServicer_to_server,
        UsersServicer(pool, key, ttl),
        "aiswa.users.v1.UsersService",
    )
    await service.run()


def bootstrap_admin(config: ServiceConfig, key_file: Path) -> None:
    """Create the first admin and its API key when the users table is empty."""
    import psycopg

    with command_database_url(config) as url, psycopg.connect(url) as conn:
        if conn.execute("SELECT count(*) FROM users").fetchone()[0] > 0:
            if not key_file.exists():
                print(f"users already exist; no new admin key written to {key_file}")
            return
        user_id = conn.execute(
            "INSERT INTO users (email, role) VALUES ('admin@aiswa.local', 'admin') "
            "RETURNING user_id"
        ).fetchone()[0]
        key_id, api_key, secret_hash = new_api_key()
        conn.execute(
            "INSERT INTO api_keys (key_id, user_id, name, secret_hash) "
            "VALUES (%s, %s, 'bootstrap', %s)",
            (key_id, user_id, secret_hash),
        )
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(api_key + "\n")
        conn.commit()
    print(f"created admin user admin@aiswa.local; its API key is in {key_file}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aiswa_users", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gRPC server")
    sub.add_parser("migrate", help="apply pending database migrations")
    boot = sub.add_parser("bootstrap-admin", help="create the first admin user")
    boot.add_argument("--key-file", type=Path, required=True,
                      help="file to write the admin's API key to (mode 0600)")
    args = parser.parse_args()
    config = ServiceConfig.from_env("users")
    if args.command == "serve":
        asyncio.run(serve(config))
    elif args.command == "migrate":
        command_migrate(config, MIGRATIONS)
    else:
        bootstrap_admin(config, args.key_file)


if __name__ == "__main__":
    main()
