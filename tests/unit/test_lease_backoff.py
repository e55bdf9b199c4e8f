"""A consumer's check request ends the backoff between reads of new credentials.

A database login can expire while OpenBao cannot issue a new one (OpenBao or
the database is down). When OpenBao works again, the login should be replaced
at the consumer's next rejected connection, not after a backoff of up to 30 s.
"""

from __future__ import annotations

import asyncio
import time

from aiswa_runtime._secrets import Lease, LeasedSecret, SecretsError, UsernamePassword


class FlakyCreds:
    """An OpenBao client stand-in whose reads of new credentials fail ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.reads = 0

    async def read_lease(self, path: str) -> Lease:
        self.reads += 1
        if self.reads <= self.failures:
            raise SecretsError(f"OpenBao GET /v1/{path} failed with HTTP 500", 500)
        return Lease(f"{path}/lease-{self.reads}", 60.0, True,
                     UsernamePassword(f"user-{self.reads}", "secret"))


def _secret(client: FlakyCreds) -> LeasedSecret:
    secret = LeasedSecret(client, "database/creds/projects",  # type: ignore[arg-type]
                          min_check_interval=0.3, max_backoff=30.0)
    secret._adopt(Lease("database/creds/projects/old", 60.0, True,
                        UsernamePassword("user-old", "secret")))
    return secret


async def test_backoff_sleeps_whole_time_without_check():
    secret = _secret(FlakyCreds(0))
    started = time.monotonic()
    await secret._backoff(0.2)
    assert time.monotonic() - started >= 0.2


async def test_check_request_ends_long_backoff():
    secret = _secret(FlakyCreds(0))
    started = time.monotonic()
    waiting = asyncio.create_task(secret._backoff(30.0))
    await asyncio.sleep(0.05)
    secret.check_now()
    # Without the check the task would sleep 30 s and this timeout would end the test.
    async with asyncio.timeout(5):
        await waiting
    # It still waits min_check_interval from the start of the backoff.
    assert time.monotonic() - started >= 0.3


async def test_replace_waits_with_interruptible_backoff(monkeypatch):
    client = FlakyCreds(2)
    secret = _secret(client)
    slept: list[float] = []

    async def backoff(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(secret, "_backoff", backoff)
    await secret._replace("the lease expired while renewal failed")
    assert client.reads == 3
    assert len(slept) == 2
    assert secret.current.username == "user-3"
