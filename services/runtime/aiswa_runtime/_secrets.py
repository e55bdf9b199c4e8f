"""Short-lived credentials from OpenBao for one service process.

The process logs in once with its AppRole. The launcher passes the role id and
a response-wrapped, single-use secret id through an inherited file descriptor
(``AISWA_OPENBAO_BOOTSTRAP_FD``), so no secret is in the environment or on the
command line. :class:`OpenBaoClient` unwraps the secret id, logs in and keeps
the periodic token alive. Because the secret id works once, a token that
expires cannot be replaced: the client then sets its :class:`FatalSignal` and
the service exits so that its supervisor restarts it with a new secret id.

:class:`LeasedSecret` keeps one dynamic secret (a PostgreSQL or RabbitMQ login)
current. It renews the lease at a third of its duration and, once OpenBao caps
the lease at the role's max TTL or the lease is gone, reads new credentials and
hands them to its consumers before the old lease expires.

OpenBao speaks the Vault HTTP API (``/v1/...``, header ``X-Vault-Token``).
Logs name a lease by the last segment of its id. They never contain a
password, a token or a secret id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

log = logging.getLogger(__name__)

# HTTP statuses after which the same request may succeed later: rate limits,
# a sealed or standby server (503) and other server-side failures.
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


class SecretsError(RuntimeError):
    """OpenBao rejected a request or could not be reached.

    ``status`` is the HTTP status, or None when no response arrived.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BootstrapError(SecretsError):
    """The process could not log in to OpenBao with the secret id it was given."""


class LeaseGoneError(SecretsError):
    """OpenBao has no such lease any more: it was revoked or it expired."""


def is_transient(exc: BaseException) -> bool:
    """Return True for a failure after which the same request may succeed later."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, SecretsError) and (
        exc.status is None or exc.status in _TRANSIENT_STATUSES
    )


def lease_suffix(lease_id: str) -> str:
    """Return the last path segment of a lease id, the only part of it that logs show."""
    return lease_id.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class UsernamePassword:
    """A login for PostgreSQL or RabbitMQ; ``repr`` leaves out the password."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Lease:
    """Dynamic credentials and the lease that keeps them valid."""

    lease_id: str
    duration: float
    renewable: bool
    login: UsernamePassword = field(repr=False)

    @property
    def suffix(self) -> str:
        return lease_suffix(self.lease_id)


class FatalSignal:
    """An event that is set once the process can no longer keep its credentials.

    The service's run loop waits on it, stops and exits non-zero, so that its
    supervisor restarts it with a new secret id.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = ""

    def fire(self, reason: str) -> None:
        if self._event.is_set():
            return
        self.reason = reason
        log.critical("credentials lost; the service must be restarted", extra={"reason": reason})
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> str:
        """Wait until the signal is set and return its reason."""
        await self._event.wait()
        return self.reason


@dataclass(frozen=True, slots=True)
class BootstrapMessage:
    """The role id and wrapping token that the launcher writes to the bootstrap descriptor."""

    role_id: str
    wrapping_token: str = field(repr=False)


def read_bootstrap_fd(fd: int, timeout: float = 30.0) -> BootstrapMessage:
    """Read the bootstrap JSON object from ``fd`` up to EOF, then close ``fd``.

    Raises :class:`BootstrapError` when nothing arrives within ``timeout``
    seconds or the content is not ``{"role_id": ..., "wrapping_token": ...}``.
    """
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(remaining, 0.0))
            if not readable:
                raise BootstrapError(
                    f"no EOF on the OpenBao bootstrap file descriptor {fd} within "
                    f"{timeout:.0f} s; the launcher must write the login and close its end"
                )
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        raise BootstrapError(
            f"cannot read the OpenBao bootstrap file descriptor {fd} ({exc.strerror}); "
            "the launcher must pass it open to the service (`make up`)"
        ) from None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        message = json.loads(b"".join(chunks))
        return BootstrapMessage(role_id=str(message["role_id"]),
                                wrapping_token=str(message["wrapping_token"]))
    except (ValueError, KeyError, TypeError):
        # The content may hold the wrapping token, so the error leaves it out.
        raise BootstrapError(
            f"the OpenBao bootstrap file descriptor {fd} did not contain a JSON object "
            'with "role_id" and "wrapping_token"'
        ) from None


def _retry_log(action: str, **ids: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            f"{action} failed; retrying",
            extra={**ids, "attempt": state.attempt_number,
                   "delay": round(state.next_action.sleep, 2) if state.next_action else None,
                   "error": _describe(error)},
        )

    return before_sleep


def _describe(error: BaseException | None) -> str:
    # httpx's messages name the URL but no header, and tokens travel only in
    # headers. SecretsError carries OpenBao's error text, which names no secret.
    if error is None:
        return ""
    return f"{type(error).__name__}: {error}"


class OpenBaoClient:
    """A workload's client of OpenBao: AppRole login, token renewal, leases.

    ``address`` is the server's base address (``https://127.0.0.1:58200``).
    ``ca_cert`` is the CA that signs the listener's certificate.
    """

    def __init__(self, address: str, *, ca_cert: Path | None = None,
                 timeout: float = 10.0) -> None:
        verify: ssl.SSLContext | bool = True
        if ca_cert is not None:
            verify = ssl.create_default_context(cafile=str(ca_cert))
        self.address = address.rstrip("/")
        self._http = httpx.AsyncClient(base_url=f"{self.address}/v1/", verify=verify,
                                       timeout=timeout)
        self._token: str | None = None
        self.token_ttl = 0.0
        self.token_renewable = False
        self.fatal = FatalSignal()

    # --- requests --------------------------------------------------------

    async def request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                      token: str | None = None,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Send one request and return the reply's JSON object ({} for 204).

        Uses the client's token unless ``token`` is given. Raises
        :class:`SecretsError` for a reply with an error status.
        """
        request_headers = dict(headers or {})
        sent_token = token if token is not None else self._token
        if sent_token is not None:
            request_headers["X-Vault-Token"] = sent_token
        response = await self._http.request(method, path, json=body, headers=request_headers)
        if response.status_code >= 400:
            try:
                errors = "; ".join(response.json().get("errors") or []) or response.text
            except ValueError:
                errors = response.text
            raise SecretsError(
                f"OpenBao {method} /v1/{path} failed with HTTP {response.status_code}: "
                f"{errors.strip()[:500]}",
                status=response.status_code,
            )
        if response.status_code == 204 or not response.content:
            return {}
        reply: dict[str, Any] = response.json()
        return reply

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- login -----------------------------------------------------------

    @classmethod
    async def bootstrap(cls, address: str, bootstrap_fd: int, *, ca_cert: Path | None = None,
                        timeout: float = 10.0) -> OpenBaoClient:
        """Read the bootstrap message from ``bootstrap_fd``, unwrap the secret id, log in."""
        message = read_bootstrap_fd(bootstrap_fd)
        client = cls(address, ca_cert=ca_cert, timeout=timeout)
        try:
            secret_id = await client.unwrap_secret_id(message.wrapping_token)
            await client.login_approle(message.role_id, secret_id)
        except BaseException:
            await client.aclose()
            raise
        return client

    async def _send_once(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send a request that consumes a single-use value.

        Retries only while the server cannot be reached at all: such a request
        never arrived, so it did not consume the value. Any reply, and a
        timeout after the request went out, is final.
        """
        retrying = AsyncRetrying(
            stop=stop_after_delay(30),
            wait=wait_random_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception(lambda exc: isinstance(exc, httpx.ConnectError)),
            before_sleep=_retry_log(f"OpenBao {path}"),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.request(method, path, **kwargs)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def unwrap_secret_id(self, wrapping_token: str) -> str:
        """Unwrap a response-wrapped AppRole secret id; never retried once it was sent."""
        try:
            reply = await self._send_once("POST", "sys/wrapping/unwrap", token=wrapping_token)
        except httpx.HTTPError as exc:
            raise BootstrapError(
                f"unwrapping the AppRole secret id failed: OpenBao at {self.address} did not "
                f"reply ({_describe(exc)}). A request that may have reached it is not sent "
                "again, because the wrapping token works once: the service must be restarted "
                "by its supervisor, which passes a new one"
            ) from None
        except SecretsError as exc:
            raise BootstrapError(
                f"unwrapping the AppRole secret id at {self.address} failed ({_describe(exc)}). "
                "The wrapping token works once and for a short time, so the secret id may "
                "have been intercepted by another process or expired. It is not retried: "
                "the service must be restarted by its supervisor, which passes a new one; "
                "if this repeats, check who else reads the bootstrap file descriptor"
            ) from None
        try:
            return str(reply["data"]["secret_id"])
        except (KeyError, TypeError):
            raise BootstrapError(
                "the unwrapped response contains no data.secret_id; the launcher must wrap "
                "the reply of auth/approle/role/<role>/secret-id"
            ) from None

    async def login_approle(self, role_id: str, secret_id: str) -> None:
        """Log in with AppRole and keep the token; the secret id is single-use."""
        try:
            reply = await self._send_once("POST", "auth/approle/login",
                                          body={"role_id": role_id, "secret_id": secret_id})
        except (SecretsError, httpx.HTTPError) as exc:
            raise BootstrapError(
                f"AppRole login at {self.address} failed ({_describe(exc)}); the secret id "
                "is single-use, so the service must be restarted by its supervisor"
            ) from None
        auth = reply.get("auth") or {}
        self._token = auth["client_token"]
        self.token_ttl = float(auth.get("lease_duration") or 0)
        self.token_renewable = bool(auth.get("renewable"))
        log.info("logged in to OpenBao",
                 extra={"address": self.address, "token_ttl": self.token_ttl,
                        "renewable": self.token_renewable})

    @property
    def token(self) -> str:
        """The client token; for a later request from another event loop."""
        if self._token is None:
            raise RuntimeError("OpenBaoClient is not logged in")
        return self._token

    def use_token(self, token: str) -> None:
        self._token = token

    async def renew_token(self) -> float:
        """Renew the client's token and return its new TTL in seconds."""
        reply = await self.request("POST", "auth/token/renew-self", body={})
        auth = reply.get("auth") or {}
        self.token_ttl = float(auth.get("lease_duration") or 0)
        return self.token_ttl

    async def revoke_self(self) -> None:
        """Revoke the client's token; OpenBao revokes every lease created with it."""
        if self._token is None:
            return
        await self.request("POST", "auth/token/revoke-self", body={})
        self._token = None
        log.info("OpenBao token revoked with its leases", extra={"address": self.address})

    async def keep_token_alive(self) -> None:
        """Renew the token at a third of its TTL until cancelled.

        Transient failures are retried with jittered backoff until the token
        would expire. A rejected renewal (the token was revoked or expired), or
        an expiry while OpenBao could not be reached, sets :attr:`fatal`,
        because the single-use secret id cannot log in again.
        """
        if self.token_ttl <= 0:
            log.info("the OpenBao token has no TTL; it is not renewed")
            return
        if not self.token_renewable:
            log.warning("the OpenBao token is not renewable; the service stops when it "
                        "expires", extra={"token_ttl": self.token_ttl})
            await asyncio.sleep(self.token_ttl)
            self.fatal.fire(f"the OpenBao token expired after {self.token_ttl:.0f} s and "
                            "is not renewable")
            return
        expires_at = time.monotonic() + self.token_ttl
        while True:
            await asyncio.sleep(self.token_ttl / 3)
            retrying = AsyncRetrying(
                stop=stop_after_delay(max(expires_at - time.monotonic(), 0.0)),
                wait=wait_random_exponential(multiplier=0.5, max=min(30.0, self.token_ttl / 3)),
                retry=retry_if_exception(is_transient),
                before_sleep=_retry_log("OpenBao token renewal"),
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        ttl = await self.renew_token()
            except (SecretsError, httpx.HTTPError) as exc:
                if is_transient(exc):
                    reason = (f"the OpenBao token expired while {self.address} could not be "
                              f"reached ({_describe(exc)})")
                else:
                    reason = (f"OpenBao rejected the token renewal ({_describe(exc)}); the "
                              "token was revoked or expired")
                self.fatal.fire(reason + "; the secret id is single-use, so the service "
                                "cannot log in again")
                return
            expires_at = time.monotonic() + ttl
            log.info("OpenBao token renewed", extra={"token_ttl": ttl})

    # --- leases ----------------------------------------------------------

    async def read_lease(self, path: str) -> Lease:
        """Read new credentials from ``path`` (``database/creds/<role>``)."""
        reply = await self.request("GET", path.strip("/"))
        data = reply.get("data") or {}
        try:
            login = UsernamePassword(str(data["username"]), str(data["password"]))
        except KeyError:
            raise SecretsError(
                f"OpenBao's reply for {path} has no data.username and data.password; "
                "is it a database or rabbitmq creds path?"
            ) from None
        return Lease(lease_id=str(reply["lease_id"]), duration=float(reply["lease_duration"]),
                     renewable=bool(reply.get("renewable")), login=login)

    async def renew_lease(self, lease_id: str, increment: float) -> float:
        """Renew a lease by ``increment`` seconds; return the duration that OpenBao granted.

        Raises :class:`LeaseGoneError` when the lease was revoked or expired.
        """
        try:
            reply = await self.request("PUT", "sys/leases/renew",
                                       body={"lease_id": lease_id, "increment": int(increment)})
        except SecretsError as exc:
            if exc.status == 400:
                raise LeaseGoneError(str(exc), exc.status) from None
            raise
        return float(reply["lease_duration"])

    async def lookup_lease(self, lease_id: str) -> float:
        """Return the lease's remaining TTL in seconds.

        Raises :class:`LeaseGoneError` when the lease was revoked or expired.
        """
        try:
            reply = await self.request("PUT", "sys/leases/lookup", body={"lease_id": lease_id})
        except SecretsError as exc:
            if exc.status in (400, 404):
                raise LeaseGoneError(str(exc), exc.status) from None
            raise
        return float((reply.get("data") or {}).get("ttl") or 0)


ReplaceCallback = Callable[[UsernamePassword], Awaitable[None]]


class LeasedSecret:
    """One dynamic secret kept current: renewed, and replaced before it expires.

    ``path`` is the creds path (``database/creds/users``). Consumers register
    :meth:`on_replace` callbacks, which receive each new login. A consumer
    that gets an authentication failure calls :meth:`check_now`, so that a
    revoked lease is noticed at once instead of at the next renewal.
    """

    def __init__(self, client: OpenBaoClient, path: str, *, name: str | None = None,
                 min_check_interval: float = 1.0, max_backoff: float = 30.0) -> None:
        self.client = client
        self.path = path.strip("/")
        self.name = name or self.path
        self._min_check_interval = min_check_interval
        self._max_backoff = max_backoff
        self._lease: Lease | None = None
        # The duration of a fresh lease, which is the increment of each renewal.
        self._ttl = 0.0
        self._expires_at = 0.0
        self._listeners: list[ReplaceCallback] = []
        self._check_requested = asyncio.Event()
        self._last_check = 0.0
        self._task: asyncio.Task[None] | None = None
        self.renewals = 0
        self.replacements = 0

    @property
    def current(self) -> UsernamePassword:
        """The login to use now."""
        if self._lease is None:
            raise RuntimeError(f"LeasedSecret({self.name}).start() was not awaited")
        return self._lease.login

    @property
    def lease(self) -> Lease:
        if self._lease is None:
            raise RuntimeError(f"LeasedSecret({self.name}).start() was not awaited")
        return self._lease

    def on_replace(self, callback: ReplaceCallback) -> None:
        """Call ``callback(login)`` after each replacement of the credentials."""
        self._listeners.append(callback)

    def check_now(self) -> None:
        """Ask for a lease lookup now; called by a consumer after an authentication failure.

        Lookups run at most once per ``min_check_interval`` seconds, however
        often this is called.
        """
        self._check_requested.set()

    async def start(self, timeout: float = 30.0) -> None:
        """Read the first credentials, retrying for ``timeout`` seconds, and start renewing."""
        retrying = AsyncRetrying(
            stop=stop_after_delay(timeout),
            wait=wait_random_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception(is_transient),
            before_sleep=_retry_log("reading credentials", path=self.path),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                lease = await self.client.read_lease(self.path)
        self._adopt(lease)
        log.info("credentials obtained",
                 extra={"secret": self.name, "lease": lease.suffix,
                        "username": lease.login.username, "lease_duration": lease.duration})
        self._task = asyncio.get_running_loop().create_task(
            self._keep_current(), name=f"lease {self.name}")

    async def stop(self) -> None:
        """Stop renewing; the lease stays valid until it expires or its token is revoked."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _adopt(self, lease: Lease) -> None:
        self._lease = lease
        self._ttl = lease.duration
        self._expires_at = time.monotonic() + lease.duration

    @property
    def renew_interval(self) -> float:
        """Seconds between renewals: a third of a fresh lease's duration."""
        return max(self._ttl / 3, 0.5)

    async def _keep_current(self) -> None:
        next_renewal = time.monotonic() + self.renew_interval
        while True:
            lease = self.lease
            try:
                if await self._wait_for_check(next_renewal):
                    if await self._lease_gone(lease):
                        await self._replace("the lease was revoked or expired")
                        next_renewal = time.monotonic() + self.renew_interval
                    continue
                if lease.renewable:
                    await self._renew_or_replace(lease)
                else:
                    await self._replace("the lease is not renewable")
            except Exception:
                # An unexpected reply must not end renewal for the process's lifetime.
                log.exception("lease renewal step failed; trying again at the next interval",
                              extra={"secret": self.name, "lease": lease.suffix})
            next_renewal = time.monotonic() + self.renew_interval

    async def _renew_or_replace(self, lease: Lease) -> None:
        try:
            duration = await self._renew(lease)
        except LeaseGoneError:
            await self._replace("OpenBao has no such lease any more")
            return
        except (SecretsError, httpx.HTTPError) as exc:
            await self._replace(f"the lease expired while renewal failed ({_describe(exc)})")
            return
        self.renewals += 1
        self._expires_at = time.monotonic() + duration
        log.info("lease renewed", extra={"secret": self.name, "lease": lease.suffix,
                                         "lease_duration": duration})
        # A renewal that grants less than two intervals was capped at the
        # role's max TTL. Replace now, while the old login stays valid for at
        # least one more interval, so that consumers can finish with it.
        if duration < 2 * self.renew_interval:
            await self._replace(f"the lease reached its max TTL ({duration:.0f} s left)")

    async def _wait_for_check(self, deadline: float) -> bool:
        """Sleep until ``deadline`` (time.monotonic()); return True early for a check.

        A check comes at most once per ``min_check_interval``: a request that
        comes sooner waits for the rest of that interval.
        """
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                # Not asyncio.wait_for, which on Python 3.11 can lose the
                # cancellation of stop() when the event is set at that moment.
                async with asyncio.timeout(remaining):
                    await self._check_requested.wait()
            except TimeoutError:
                return False
            hold = self._last_check + self._min_check_interval - time.monotonic()
            if hold <= 0:
                self._check_requested.clear()
                self._last_check = time.monotonic()
                return True
            if hold >= deadline - time.monotonic():
                # The renewal comes first, and it notices a revoked lease too.
                await asyncio.sleep(max(deadline - time.monotonic(), 0.0))
                return False
            await asyncio.sleep(hold)

    async def _backoff(self, seconds: float) -> None:
        """Sleep ``seconds`` between reads of new credentials, or less after a check request.

        A consumer whose login was rejected (it expired while OpenBao or the
        database was down) needs the new credentials now, so its check request
        ends the wait. Even then the wait lasts ``min_check_interval`` (or
        ``seconds``, if shorter), so reads come at most that often.
        """
        started = time.monotonic()
        try:
            async with asyncio.timeout(seconds):
                await self._check_requested.wait()
        except TimeoutError:
            return
        self._check_requested.clear()
        rest = min(self._min_check_interval, seconds) - (time.monotonic() - started)
        if rest > 0:
            await asyncio.sleep(rest)

    async def _lease_gone(self, lease: Lease) -> bool:
        try:
            ttl = await self.client.lookup_lease(lease.lease_id)
        except LeaseGoneError:
            return True
        except (SecretsError, httpx.HTTPError) as exc:
            log.warning("lease lookup failed; the next renewal tries again",
                        extra={"secret": self.name, "lease": lease.suffix,
                               "error": _describe(exc)})
            return False
        log.info("lease checked after a reported login failure; it is valid",
                 extra={"secret": self.name, "lease": lease.suffix, "ttl": ttl})
        return False

    async def _renew(self, lease: Lease) -> float:
        """Renew ``lease``, retrying transient failures until the lease expires."""
        retrying = AsyncRetrying(
            stop=stop_after_delay(max(self._expires_at - time.monotonic(), 0.0)),
            wait=wait_random_exponential(multiplier=0.5,
                                         max=min(self._max_backoff, self.renew_interval)),
            retry=retry_if_exception(is_transient),
            before_sleep=_retry_log("lease renewal", secret=self.name, lease=lease.suffix),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.client.renew_lease(lease.lease_id, self._ttl)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _replace(self, reason: str) -> None:
        """Read new credentials, retrying until it works, and hand them to the consumers.

        A rejected read (403 for a token that expired) is retried as well: the
        token renewal notices a dead token and sets the fatal signal.
        """
        old = self.lease
        retrying = AsyncRetrying(
            sleep=self._backoff,
            wait=wait_random_exponential(multiplier=0.5, max=self._max_backoff),
            retry=retry_if_exception(lambda exc: isinstance(exc, (SecretsError,
                                                                  httpx.HTTPError))),
            before_sleep=_retry_log("reading new credentials", secret=self.name),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                lease = await self.client.read_lease(self.path)
        self._adopt(lease)
        self.replacements += 1
        # A check requested before the replacement concerned the old login.
        self._check_requested.clear()
        log.info("credentials replaced",
                 extra={"secret": self.name, "reason": reason, "old_lease": old.suffix,
                        "lease": lease.suffix, "username": lease.login.username,
                        "lease_duration": lease.duration})
        for callback in list(self._listeners):
            try:
                await callback(lease.login)
            except Exception:
                log.exception("a consumer failed to switch to the new credentials",
                              extra={"secret": self.name, "lease": lease.suffix,
                                     "consumer": getattr(callback, "__qualname__",
                                                         repr(callback))})
