"""The dynamic credentials of one service process, from its environment.

With ``AISWA_DATABASE_CREDS`` or ``AISWA_AMQP_CREDS`` set, the service logs in
to OpenBao (see :mod:`aiswa_runtime._secrets`) and reads a PostgreSQL or
RabbitMQ login from that path. The URLs then carry no user or password.
Without them, the URLs are used as given, with any static login inside them
(tests, ``AISWA_MESH=0``)::

    credentials = await Credentials.from_env(config)
    service.use_credentials(credentials)
    pool = await open_pool(config.require_database(), credentials=credentials.database)
    broker = Broker(config.require_amqp(), config.service, credentials=credentials.amqp)

One-shot commands (``migrate``, ``bootstrap-admin``) use
:func:`command_database_url`, which revokes its login when the command ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from yarl import URL

from ._config import ConfigError, ServiceConfig
from ._secrets import (
    FatalSignal,
    LeasedSecret,
    OpenBaoClient,
    SecretsError,
    UsernamePassword,
)

log = logging.getLogger(__name__)


def url_with_login(url: str, login: UsernamePassword) -> str:
    """Return ``url`` with ``login`` as its user and password, percent-encoded."""
    return str(URL(url).with_user(login.username).with_password(login.password))


class Credentials:
    """The process's OpenBao login and its leased database and broker logins.

    ``database`` and ``amqp`` are None when the matching ``*_CREDS`` variable
    is unset: consumers then use the login in their URL. :attr:`fatal` is set
    when the OpenBao token cannot be kept alive.
    """

    def __init__(self, client: OpenBaoClient | None = None, *,
                 database: LeasedSecret | None = None,
                 amqp: LeasedSecret | None = None) -> None:
        self.client = client
        self.database = database
        self.amqp = amqp
        self.fatal = client.fatal if client is not None else FatalSignal()
        self._token_task: asyncio.Task[None] | None = None

    @classmethod
    async def from_env(cls, config: ServiceConfig, *, start_timeout: float = 30.0,
                       request_timeout: float = 10.0) -> Credentials:
        """Log in to OpenBao and read the configured credentials; a no-op without ``*_CREDS``.

        ``start_timeout`` bounds the retries of the first read of each secret,
        and ``request_timeout`` each request to OpenBao, in seconds.
        """
        if config.database_creds is None and config.amqp_creds is None:
            return cls()
        client = await _login(config, timeout=request_timeout)
        credentials = cls(client)
        try:
            if config.database_creds is not None:
                credentials.database = LeasedSecret(client, config.database_creds,
                                                    name="database")
                await credentials.database.start(timeout=start_timeout)
            if config.amqp_creds is not None:
                credentials.amqp = LeasedSecret(client, config.amqp_creds, name="amqp")
                await credentials.amqp.start(timeout=start_timeout)
        except BaseException:
            await credentials.aclose()
            raise
        credentials._token_task = asyncio.get_running_loop().create_task(
            client.keep_token_alive(), name="openbao token")
        return credentials

    async def aclose(self, *, revoke: bool = True) -> None:
        """Stop renewing and, with ``revoke``, revoke the token and so every lease of it.

        Call it after the pool and the broker connection are closed: revoking
        a lease ends the sessions that still use its login.
        """
        for secret in (self.database, self.amqp):
            if secret is not None:
                await secret.stop()
        if self._token_task is not None:
            self._token_task.cancel()
            await asyncio.gather(self._token_task, return_exceptions=True)
            self._token_task = None
        if self.client is None:
            return
        if revoke and not self.fatal.is_set():
            try:
                await self.client.revoke_self()
            except (SecretsError, httpx.HTTPError) as exc:
                # The leases then expire at their TTL.
                log.warning("revoking the OpenBao token failed; its leases expire by themselves",
                            extra={"error": f"{type(exc).__name__}: {exc}"})
        await self.client.aclose()


async def _login(config: ServiceConfig, *, timeout: float = 10.0) -> OpenBaoClient:
    if config.openbao_address is None or config.openbao_bootstrap_fd is None:
        # ServiceConfig.from_env checks this; a config built by hand may not.
        raise ConfigError(
            "AISWA_OPENBAO_ADDR and AISWA_OPENBAO_BOOTSTRAP_FD must be set with "
            "AISWA_DATABASE_CREDS or AISWA_AMQP_CREDS; the launcher sets them (see `make up`)"
        )
    return await OpenBaoClient.bootstrap(config.openbao_address, config.openbao_bootstrap_fd,
                                         ca_cert=config.openbao_ca_cert, timeout=timeout)


async def _command_login(config: ServiceConfig, creds_path: str) -> tuple[str, UsernamePassword]:
    client = await _login(config)
    try:
        lease = await client.read_lease(creds_path)
        log.info("credentials obtained for a command",
                 extra={"path": creds_path, "lease": lease.suffix,
                        "username": lease.login.username})
        return client.token, lease.login
    except BaseException:
        await client.revoke_self()
        raise
    finally:
        await client.aclose()


async def _revoke_token(config: ServiceConfig, token: str) -> None:
    assert config.openbao_address is not None
    client = OpenBaoClient(config.openbao_address, ca_cert=config.openbao_ca_cert)
    try:
        client.use_token(token)
        await client.revoke_self()
    finally:
        await client.aclose()


@contextmanager
def command_database_url(config: ServiceConfig) -> Iterator[str]:
    """Yield the database URL for a synchronous one-shot command.

    With ``AISWA_DATABASE_CREDS`` set (``database/creds/<service>-migrate``
    for ``migrate``), the URL holds a login read from that path, and on exit
    the command's OpenBao token is revoked, which revokes the login's lease.
    Without it, the URL is ``AISWA_DATABASE_URL`` as given.
    """
    url = config.require_database()
    if config.database_creds is None:
        yield url
        return
    token, login = asyncio.run(_command_login(config, config.database_creds))
    try:
        yield url_with_login(url, login)
    finally:
        asyncio.run(_revoke_token(config, token))


def command_migrate(config: ServiceConfig, migrations: Path) -> list[str]:
    """Apply pending migrations with a one-shot login; see :func:`command_database_url`."""
    from ._db import migrate

    with command_database_url(config) as url:
        return migrate(url, migrations)
