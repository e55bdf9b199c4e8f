from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from yarl import URL

from . import _metrics
from ._errors import cancelled_from_outside
from ._secrets import LeasedSecret, UsernamePassword
from ._telemetry import extract_context, inject_headers
from ._topology import load_topology

log = logging.getLogger(__name__)

DEAD_LETTER_EXCHANGE = "aiswa.dlx"
# Seconds an ack or nack may wait to be written (see _settle).
SETTLE_TIMEOUT = 15.0
_tracer = trace.get_tracer("aiswa.amqp")

# NOTE: waits below use asyncio.timeout, not asyncio.wait_for: on Python 3.11,
# wait_for loses a cancellation that arrives as the awaited operation finishes,
# and then a cancelled publisher or consumer task would never stop.

# Errors of an operation on a channel whose connection closed: the robust
# connection reopens the channel, so the operation may succeed after that.
_CLOSED_CHANNEL_ERRORS = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
)


class UnroutableMessage(Exception):
    """RabbitMQ returned a published message because no queue is bound for its routing key."""


class PoisonMessage(Exception):
    """A message that can never be processed: it goes to the dead-letter queue at once."""


def queue_arguments(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "x-queue-type": spec.get("type", "quorum"),
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": name,
        # Safety net behind the consumer's own attempt count: the broker
        # dead-letters a message redelivered more often than this.
        "x-delivery-limit": int(spec.get("delivery_limit", 10)),
    }


async def declare_topology(url: str) -> None:
    """Declare every exchange, quorum queue and dead-letter queue of the topology.

    The launcher runs this with the RabbitMQ administrator's credentials
    before any service starts, so that no published message is unroutable
    whatever the start order. Services may not create exchanges: each one only
    checks the exchanges and declares the queues that it consumes (see
    :meth:`Broker.connect`), which its narrowed permissions allow.
    """
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        await Broker.declare_topology(await connection.channel())


class Broker:
    """A robust connection to RabbitMQ with publisher confirms and the platform's queues.

    The launcher declares the topology (:func:`declare_topology`); a service
    checks the exchanges and declares only the queues it consumes.

    With ``credentials`` the connection logs in with their current login, and
    reconnects with the new one after each replacement (see
    :meth:`_switch_login`). Publishing waits while the connection switches.
    A publish that hits a closed channel waits for the reconnection and is
    sent once more, so a consumer may receive a message twice: every message
    carries a message id for that.
    """

    def __init__(self, url: str, service: str, *, credentials: LeasedSecret | None = None,
                 switch_timeout: float = 30.0) -> None:
        self._url = url
        self._service = service
        self._credentials = credentials
        self._switch_timeout = switch_timeout
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._pending: set[asyncio.Task[None]] = set()
        # Set while publishing may proceed; cleared while the login switches.
        self._open_for_publishing = asyncio.Event()
        self._open_for_publishing.set()
        self._publishing = 0
        self._publishing_done = asyncio.Event()
        self._publishing_done.set()
        self._closing = False

    def _login_url(self, login: UsernamePassword | None = None) -> URL:
        url = URL(self._url)
        if self._credentials is None:
            return url
        login = login or self._credentials.current
        return url.with_user(login.username).with_password(login.password)

    async def connect(self, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                self.connection = await aio_pika.connect_robust(
                    self._login_url(),
                    client_properties={"connection_name": self._service},
                    timeout=10,
                    # With leased logins, a switch reconnects at once
                    # instead of after aio-pika's default 5 s.
                    **({"reconnect_interval": 1} if self._credentials else {}),
                )
                break
            except (ConnectionError, OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
                if self._credentials is not None:
                    self._credentials.check_now()
                if asyncio.get_running_loop().time() > deadline:
                    raise ConnectionError(
                        f"{self._service}: RabbitMQ not reachable at its configured "
                        f"address after {timeout:.0f} s ({exc}); is it running? "
                        "`make status`"
                    ) from exc
                log.warning("RabbitMQ not reachable yet; retrying", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
        # on_return_raises: otherwise aiormq confirms a message that RabbitMQ
        # returned as unroutable, and publish() would report it as sent.
        self._channel = await self.connection.channel(publisher_confirms=True,
                                                      on_return_raises=True)
        await self._check_topology(self._channel)
        if self._credentials is not None:
            self.connection.close_callbacks.add(self._on_connection_closed)
            self._credentials.on_replace(self._switch_login)
        log.info("connected to RabbitMQ", extra={"service": self._service})

    def _on_connection_closed(self, _connection: object, exc: BaseException | None) -> None:
        # aio-pika calls this for every lost connection and failed reconnection
        # attempt. RabbitMQ closes the connections of a deleted user (a revoked
        # lease) and then rejects its login, so each such close requests a lease
        # lookup. A close that this broker started for a switch carries
        # CancelledError and needs none.
        if exc is None or isinstance(exc, asyncio.CancelledError):
            return
        if self._credentials is not None:
            self._credentials.check_now()

    async def _switch_login(self, login: UsernamePassword) -> None:
        """Reconnect with ``login``; the robust connection restores channels and consumers.

        New publishes wait, and publishes in flight get their confirms, before
        the old connection closes. Messages that a consumer had not acknowledged
        yet are delivered again on the new connection.
        """
        connection = self.connection
        if connection is None:
            return
        # The robust connection reads the URL at each attempt, so a connection
        # that is down (the old user was deleted) comes back with the new login.
        connection.url = self._login_url(login)
        self._open_for_publishing.clear()
        try:
            if connection.connected.is_set():
                try:
                    async with asyncio.timeout(self._switch_timeout):
                        await self._publishing_done.wait()
                except TimeoutError:
                    log.warning("publishes still in flight at the login switch; they may fail",
                                extra={"count": self._publishing})
                async with asyncio.timeout(self._switch_timeout):
                    await connection.reconnect()
            await self._wait_reconnected(self._switch_timeout)
            log.info("RabbitMQ connection switched to the new login",
                     extra={"service": self._service, "username": login.username})
        except TimeoutError:
            # The robust connection keeps retrying with the new URL.
            log.warning("RabbitMQ did not accept the new login in time; still reconnecting",
                        extra={"service": self._service, "timeout": self._switch_timeout})
        finally:
            self._open_for_publishing.set()

    async def _wait_reconnected(self, timeout: float) -> None:
        """Wait until the publishing channel is open again after a reconnection."""
        channel = self.channel
        async with asyncio.timeout(timeout):
            while True:
                await channel.ready()
                if not channel.is_closed:
                    return
                await asyncio.sleep(0.05)

    async def _check_topology(self, channel: AbstractRobustChannel) -> None:
        """Check the exchanges exist and declare this service's own queues, idempotently."""
        topology = load_topology()
        exchanges = {DEAD_LETTER_EXCHANGE, "aiswa.events",
                     *(spec["exchange"] for spec in topology["queues"].values())}
        for name in sorted(exchanges):
            try:
                # Passive: services have no permission to create exchanges.
                await channel.declare_exchange(name, passive=True)
            except aio_pika.exceptions.ChannelClosed as exc:
                raise ConnectionError(
                    f"{self._service}: exchange {name!r} is missing from RabbitMQ ({exc}); the "
                    "launcher declares the topology at `make up`, or call "
                    "aiswa_runtime._amqp.declare_topology(ADMIN_URL)") from None
        workload = topology.get("workloads", {}).get(self._service, {})
        for name in workload.get("consumes", []):
            spec = topology["queues"][name]
            queue = await channel.declare_queue(name, durable=True,
                                                arguments=queue_arguments(name, spec))
            exchange = await channel.get_exchange(spec["exchange"], ensure=False)
            for key in spec.get("binding_keys", [spec.get("routing_key", name)]):
                await queue.bind(exchange, routing_key=key)

    @staticmethod
    async def declare_topology(channel: AbstractRobustChannel) -> None:
        topology = load_topology()
        dlx = await channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        for name, spec in topology["queues"].items():
            exchange_name = spec["exchange"]
            if exchange_name not in exchanges:
                kind = (
                    aio_pika.ExchangeType.TOPIC
                    if exchange_name == "aiswa.events"
                    else aio_pika.ExchangeType.DIRECT
                )
                exchanges[exchange_name] = await channel.declare_exchange(
                    exchange_name, kind, durable=True
                )
            queue = await channel.declare_queue(
                name, durable=True, arguments=queue_arguments(name, spec)
            )
            for key in spec.get("binding_keys", [spec.get("routing_key", name)]):
                await queue.bind(exchanges[exchange_name], routing_key=key)
            dead = await channel.declare_queue(
                f"{name}.dlq", durable=True, arguments={"x-queue-type": "quorum"}
            )
            await dead.bind(dlx, routing_key=name)
        if "aiswa.events" not in exchanges:
            await channel.declare_exchange("aiswa.events", aio_pika.ExchangeType.TOPIC, durable=True)

    @property
    def channel(self) -> AbstractRobustChannel:
        if self._channel is None:
            raise RuntimeError("Broker.connect() was not awaited")
        return self._channel

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: Mapping[str, Any],
        *,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        reconnect_wait: float | None = None,
    ) -> None:
        """Publish a persistent JSON message; return once the broker confirmed it.

        Raises when the broker rejects it, or :class:`UnroutableMessage` when it
        cannot route it to any queue (``mandatory``), so a caller never reports
        a message as sent that is not. A publish that finds the connection
        closed waits for the reconnection at most ``reconnect_wait`` seconds
        (the login switch's timeout by default). A caller that has an outbox
        and a waiting client passes less.
        """
        with _tracer.start_as_current_span(
            f"{routing_key} publish", kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "rabbitmq", "messaging.destination.name": exchange,
                        "messaging.rabbitmq.destination.routing_key": routing_key},
        ):
            message_headers = inject_headers(dict(headers or {}))
            message = aio_pika.Message(
                json.dumps(payload).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                headers=message_headers,
            )
            await self._publish(exchange, message, routing_key, reconnect_wait)

    async def _publish(self, exchange: str, message: aio_pika.Message, routing_key: str,
                       reconnect_wait: float | None = None) -> None:
        """Publish with confirm.

        With leased credentials, a publish that hits a closed channel waits for
        the reconnection and is sent once more. Without them a closed channel
        fails the publish at once, as before leased logins existed.
        """
        try:
            await self._publish_once(exchange, message, routing_key)
        except _CLOSED_CHANNEL_ERRORS as exc:
            if self._credentials is None or self._closing:
                raise
            log.warning("publish hit a closed channel; retrying once after reconnection",
                        extra={"exchange": exchange, "routing_key": routing_key,
                               "message_id": message.message_id, "error": repr(exc)})
            try:
                await self._wait_reconnected(
                    self._switch_timeout if reconnect_wait is None else reconnect_wait)
            except TimeoutError:
                raise exc from None
            await self._publish_once(exchange, message, routing_key)

    async def _publish_once(self, exchange: str, message: aio_pika.Message,
                            routing_key: str) -> None:
        # Counted as in flight only while it is sent, so that a login switch
        # waits for it but not for a publish that itself waits for reconnection.
        if not self._open_for_publishing.is_set():
            async with asyncio.timeout(self._switch_timeout):
                await self._open_for_publishing.wait()
        self._publishing += 1
        self._publishing_done.clear()
        try:
            target = await self.channel.get_exchange(exchange, ensure=False)
            try:
                await target.publish(message, routing_key=routing_key, mandatory=True,
                                     timeout=10)
            except aiormq.exceptions.PublishError:
                raise UnroutableMessage(
                    f"RabbitMQ returned message {message.message_id!r}: no queue is bound to "
                    f"exchange {exchange!r} for routing key {routing_key!r}. The launcher "
                    "declares the topology at `make up`; check mesh/topology.yaml") from None
            except asyncio.CancelledError:
                if cancelled_from_outside():
                    raise
                # The connection closed before the confirm (see cancelled_from_outside).
                raise ConnectionError(
                    f"the RabbitMQ connection closed before message {message.message_id!r} "
                    "was confirmed") from None
        finally:
            self._publishing -= 1
            if self._publishing == 0:
                self._publishing_done.set()

    def publish_event_soon(self, routing_key: str, payload: Mapping[str, Any]) -> None:
        """Publish an event to ``aiswa.events`` in the background, from synchronous code.

        A failure is logged, not raised: events of this kind (breaker state
        changes) must never fail the call that caused them.
        """

        async def publish() -> None:
            try:
                await self.publish("aiswa.events", routing_key, payload)
            except asyncio.CancelledError:
                log.warning("event not published: the connection closed",
                            extra={"routing_key": routing_key})
                if cancelled_from_outside():
                    raise
            except Exception as exc:
                log.warning("event not published", extra={"routing_key": routing_key,
                                                          "error": repr(exc)})

        task = asyncio.get_running_loop().create_task(publish())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def consume(
        self,
        queue: str,
        handler: Callable[[dict[str, Any], AbstractIncomingMessage], Awaitable[None]],
        *,
        prefetch: int = 4,
        max_attempts: int = 5,
        on_dead_letter: Callable[[dict[str, Any], str], Awaitable[None]] | None = None,
    ) -> None:
        """Consume ``queue`` until cancelled, acking each message after ``handler`` returns.

        A handler that raises :class:`PoisonMessage`, or a message that is not a
        JSON object, goes to ``<queue>.dlq`` at once with the reason. Any other
        error requeues the message with a growing delay; after ``max_attempts``
        deliveries it goes to the dead-letter queue with the last error.
        ``on_dead_letter`` runs first, with the payload and the reason, so the
        owner of the work can record its failure.
        """
        channel = await self.connection.channel()  # type: ignore[union-attr]
        try:
            await channel.set_qos(prefetch_count=prefetch)
            source = await channel.declare_queue(queue, passive=True)
            log.info("consuming", extra={"queue": queue, "prefetch": prefetch})
            async with source.iterator() as messages:
                async for message in messages:
                    await self._handle(queue, message, handler, max_attempts, on_dead_letter)
        finally:
            # Closing the channel returns a message whose handling failed
            # with an exception to the queue, and a restarted consumer opens
            # a new channel. A close that fails or hangs must not stop a shutdown.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await channel.close()
        if not self._closing:
            # aio-pika ends the iteration when the channel stays down for a
            # minute. Raise, so that the service's supervisor consumes again.
            raise ConnectionError(f"{self._service}: consuming {queue!r} stopped while the "
                                  "broker was open; RabbitMQ may be down (`make status`)")

    async def _handle(
        self,
        queue: str,
        message: AbstractIncomingMessage,
        handler: Callable[[dict[str, Any], AbstractIncomingMessage], Awaitable[None]],
        max_attempts: int,
        on_dead_letter: Callable[[dict[str, Any], str], Awaitable[None]] | None,
    ) -> None:
        # Quorum queues count redeliveries in x-delivery-count (absent on the first).
        attempt = int((message.headers or {}).get("x-delivery-count", 0) or 0) + 1
        context = extract_context(message.headers)
        payload: Any = None
        with _tracer.start_as_current_span(
            f"{queue} process", context=context, kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "rabbitmq", "messaging.source.name": queue,
                        "messaging.message.id": message.message_id or "",
                        "messaging.rabbitmq.delivery_attempt": attempt},
        ):
            try:
                try:
                    payload = json.loads(message.body)
                except ValueError as exc:
                    raise PoisonMessage(f"body is not JSON: {exc}") from exc
                if not isinstance(payload, dict):
                    raise PoisonMessage(f"body is JSON {type(payload).__name__}, not an object")
                await handler(payload, message)
            except PoisonMessage as exc:
                await self._dead_letter(queue, message, f"poison message: {exc}",
                                        payload, on_dead_letter)
                return
            except asyncio.CancelledError:
                if cancelled_from_outside():
                    await _settle(message.nack(requeue=True), queue, message)
                    raise
                # The connection closed under the handler (see
                # cancelled_from_outside), and the consumer goes on. The nack
                # fails harmlessly on a closed channel, whose unacknowledged
                # messages RabbitMQ delivers again anyway.
                log.warning("the connection closed while the handler ran; requeueing",
                            extra={"queue": queue, "message_id": message.message_id})
                await _settle(message.nack(requeue=True), queue, message)
                return
            except Exception as exc:
                if attempt >= max_attempts:
                    log.exception("message failed on its last attempt",
                                  extra={"queue": queue, "message_id": message.message_id,
                                         "attempt": attempt})
                    await self._dead_letter(
                        queue, message, f"failed {attempt} times; last error: {exc!r}",
                        payload, on_dead_letter,
                    )
                    return
                log.warning(
                    "message failed; requeueing",
                    extra={"queue": queue, "message_id": message.message_id,
                           "attempt": attempt, "error": repr(exc)},
                )
                _metrics.MESSAGES.labels(queue, "requeued").inc()
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 10.0))
                await _settle(message.nack(requeue=True), queue, message)
                return
        if await _settle(message.ack(), queue, message):
            _metrics.MESSAGES.labels(queue, "acked").inc()

    async def _dead_letter(
        self,
        queue: str,
        message: AbstractIncomingMessage,
        reason: str,
        payload: Any,
        on_dead_letter: Callable[[dict[str, Any], str], Awaitable[None]] | None,
    ) -> None:
        if on_dead_letter is not None and isinstance(payload, dict):
            try:
                await on_dead_letter(payload, reason)
            except Exception:
                log.exception("dead-letter callback failed", extra={"queue": queue})
        headers = dict(message.headers or {})
        headers.update({"x-aiswa-dead-letter-reason": reason[:1000], "x-aiswa-source-queue": queue})
        await self._publish(
            DEAD_LETTER_EXCHANGE,
            aio_pika.Message(
                message.body,
                content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message.message_id,
                headers=headers,
            ),
            queue,
        )
        # Ack only after the dead-letter copy is confirmed, so the message is
        # never lost between the two queues.
        if await _settle(message.ack(), queue, message):
            _metrics.MESSAGES.labels(queue, "dead_lettered").inc()
        log.error("message dead-lettered",
                  extra={"queue": queue, "message_id": message.message_id, "reason": reason})

    async def close(self) -> None:
        self._closing = True
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        if self.connection is not None:
            await self.connection.close()


async def _settle(settlement: Awaitable[Any], queue: str, message: AbstractIncomingMessage,
                  timeout: float = SETTLE_TIMEOUT) -> bool:
    """Await an ack or nack, and return False when it was not sent.

    RabbitMQ requeues every unacknowledged message of a closed channel, so the
    message is delivered again and the consumer must tolerate the duplicate.
    aiormq fails a write still pending at a close with the reason of the
    close: an AMQP error, a bare ``Exception``, or a ``CancelledError`` that no
    caller requested (see :func:`cancelled_from_outside`). Any of them let out
    would end the consumer. The write also waits for room in aiormq's write
    queue, which nothing empties after a close, so the wait is limited to
    ``timeout`` seconds.
    """
    try:
        async with asyncio.timeout(timeout):
            await settlement
    except asyncio.CancelledError as exc:
        if cancelled_from_outside():
            raise
        error: BaseException = exc
    except Exception as exc:  # noqa: BLE001 - see above; the message comes again
        error = exc
    else:
        return True
    log.warning("acknowledgement not sent; RabbitMQ delivers the message again when its "
                "channel closes", extra={"queue": queue, "message_id": message.message_id,
                                         "error": repr(error)})
    return False
