from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import _metrics
from ._telemetry import extract_context, inject_headers
from ._topology import load_topology

log = logging.getLogger(__name__)

DEAD_LETTER_EXCHANGE = "aiswa.dlx"
_tracer = trace.get_tracer("aiswa.amqp")


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
    """

    def __init__(self, url: str, service: str) -> None:
        self._url = url
        self._service = service
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def connect(self, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                self.connection = await aio_pika.connect_robust(
                    self._url,
                    client_properties={"connection_name": self._service},
                    timeout=10,
                )
                break
            except (ConnectionError, OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise ConnectionError(
                        f"{self._service}: RabbitMQ not reachable at its configured "
                        f"address after {timeout:.0f} s ({exc}); is it running? "
                        "`make status`"
                    ) from exc
                log.warning("RabbitMQ not reachable yet; retrying", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
        self._channel = await self.connection.channel(publisher_confirms=True)
        await self._check_topology(self._channel)
        log.info("connected to RabbitMQ", extra={"service": self._service})

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
    ) -> None:
        """Publish a persistent JSON message; return once the broker confirmed it.

        Raises when the broker rejects it or cannot route it to any queue
        (``mandatory``), so a caller never reports a message as sent that is not.
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
            target = await self.channel.get_exchange(exchange, ensure=False)
            await target.publish(message, routing_key=routing_key, mandatory=True, timeout=10)

    def publish_event_soon(self, routing_key: str, payload: Mapping[str, Any]) -> None:
        """Publish an event to ``aiswa.events`` in the background, from synchronous code.

        A failure is logged, not raised: events of this kind (breaker state
        changes) must never fail the call that caused them.
        """

        async def publish() -> None:
            try:
                await self.publish("aiswa.events", routing_key, payload)
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
        await channel.set_qos(prefetch_count=prefetch)
        source = await channel.declare_queue(queue, passive=True)
        log.info("consuming", extra={"queue": queue, "prefetch": prefetch})
        async with source.iterator() as messages:
            async for message in messages:
                await self._handle(queue, message, handler, max_attempts, on_dead_letter)

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
                await message.nack(requeue=True)
                raise
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
                await message.nack(requeue=True)
                return
        await message.ack()
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
        dlx = await self.channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
        await dlx.publish(
            aio_pika.Message(
                message.body,
                content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message.message_id,
                headers=headers,
            ),
            routing_key=queue,
            mandatory=True,
        )
        # Ack only after the dead-letter copy is confirmed, so the message is
        # never lost between the two queues.
        await message.ack()
        _metrics.MESSAGES.labels(queue, "dead_lettered").inc()
        log.error("message dead-lettered",
                  extra={"queue": queue, "message_id": message.message_id, "reason": reason})

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
