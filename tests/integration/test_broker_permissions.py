"""Each service's RabbitMQ user reaches only the queues and exchanges the topology gives it.

The launcher sets the permissions (aiswa_mesh._rabbitmq.service_permissions);
these tests take a login of each service's OpenBao role and try what another
service may do.
"""

from __future__ import annotations

import copy
import json

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused

from aiswa_mesh._rabbitmq import service_permissions
from aiswa_runtime import Broker


def _login(leases, service: str) -> tuple[str, str]:
    """Return a new login of ``service``'s OpenBao role: (URL, user name)."""
    url = leases.amqp_url(service)
    return url, url.split("//", 1)[1].split(":", 1)[0]


async def _refused(url: str, action) -> str:  # type: ignore[no-untyped-def]
    """Run ``action(channel)`` and return the broker's refusal, or fail if it was allowed."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(ChannelAccessRefused) as refusal:
            await action(channel)
    return str(refusal.value)


async def _ignore(message) -> None:  # type: ignore[no-untyped-def]
    """Consumer callback of the tests, which only check whether consuming is allowed."""


async def _consume_one(channel, name: str) -> None:  # type: ignore[no-untyped-def]
    queue = await channel.declare_queue(name, passive=True)
    await queue.consume(_ignore)


@pytest.mark.parametrize(("service", "queue"), [
    ("reflector", "vision.analysis"),
    ("vision", "reflector.analyze"),
    ("projects", "reflector.analyze"),
    ("users", "projects.events"),
    ("dashboard", "reflector.analyze.dlq"),
])
async def test_service_cannot_consume_other_queue(leases, service, queue):
    url, user = _login(leases, service)
    reason = await _refused(url, lambda channel: _consume_one(channel, queue))
    assert f"queue '{queue}'" in reason
    assert f"user '{user}'" in reason


async def test_service_consumes_its_own_queue(leases):
    connection = await aio_pika.connect(_login(leases, "vision")[0])
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("vision.analysis", passive=True)
        tag = await queue.consume(_ignore)
        assert tag
        await queue.cancel(tag)


async def test_only_projects_publishes_tasks(leases):
    async def publish_task(channel) -> None:  # type: ignore[no-untyped-def]
        exchange = await channel.get_exchange("aiswa.tasks", ensure=False)
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="reflector.analyze")
        # A refused publish closes the channel; the next call reports it.
        await channel.declare_queue("reflector.analyze", passive=True)

    reason = await _refused(_login(leases, "vision")[0], publish_task)
    assert "exchange 'aiswa.tasks'" in reason


async def test_service_cannot_create_exchange(leases):
    reason = await _refused(
        _login(leases, "projects")[0],
        lambda channel: channel.declare_exchange("aiswa.rogue", aio_pika.ExchangeType.FANOUT))
    assert "exchange 'aiswa.rogue'" in reason


def test_permissions_follow_topology(topology):
    reflector = service_permissions(topology, "reflector", "aiswa.dlx")
    assert reflector.configure == r"^(reflector\.analyze)$"
    assert reflector.read == r"^(aiswa\.tasks|reflector\.analyze)$"
    users = service_permissions(topology, "users", "aiswa.dlx")
    assert (users.configure, users.read) == ("^$", "^$")


async def test_missing_exchange_stops_connect(leases, topology, monkeypatch):
    changed = copy.deepcopy(topology)
    changed["queues"]["vision.analysis"]["exchange"] = "aiswa.missing"
    monkeypatch.setattr("aiswa_runtime._amqp.load_topology", lambda: changed)
    broker = Broker(_login(leases, "vision")[0], "vision")
    with pytest.raises(ConnectionError) as failure:
        await broker.connect(timeout=5)
    await broker.close()
    assert "exchange 'aiswa.missing' is missing from RabbitMQ" in str(failure.value)
    assert "make up" in str(failure.value)


def test_dashboard_queues_are_bounded(rabbitmq, topology):
    # `make up` sets this policy. The services' task and event queues must never drop messages.
    queues = json.loads(rabbitmq.ctl("list_queues", "-p", rabbitmq.vhost, "--formatter", "json",
                                     "name", "policy"))
    applied = {queue["name"]: queue["policy"] for queue in queues}
    policies = json.loads(rabbitmq.ctl("list_policies", "-p", rabbitmq.vhost,
                                       "--formatter", "json"))
    definitions = {policy["name"]: json.loads(policy["definition"]) for policy in policies}
    limit = topology["queues"]["dashboard.events"]["max_length"]
    assert applied["dashboard.events"] == "aiswa-bound-dashboard.events"
    assert applied["dashboard.events.dlq"] == "aiswa-bound-dashboard.events"
    assert definitions["aiswa-bound-dashboard.events"] == {
        "max-length": limit, "overflow": "drop-head"}
    for name in ("reflector.analyze", "reflector.analyze.dlq", "projects.events"):
        assert applied[name] == "", name
