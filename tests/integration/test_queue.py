"""Task queue guarantees: dead letters, idempotent redelivery, a worker killed mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid

import aio_pika
import pytest

from conftest import STDLIB, pack_python, supervisorctl, wait_run


async def _publish(amqp_url: str, body: bytes, message_id: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("aiswa.tasks")
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="reflector.analyze", mandatory=True,
        )


async def _take_dead_letter(amqp_url: str, message_id: str, timeout: float = 30.0):
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("reflector.analyze.dlq", passive=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                await asyncio.sleep(0.3)
                continue
            if message.message_id == message_id:
                await message.ack()
                return message
            await message.nack(requeue=True)
            await asyncio.sleep(0.05)
    return None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body is not JSON"),
        (b"[1, 2]", "not an object"),
        (json.dumps({"run_id": "x", "project_id": str(uuid.uuid4()),
                     "archive_id": str(uuid.uuid4())}).encode(), "run_id='x' is not a UUID"),
        (json.dumps({"run_id": str(uuid.uuid4()), "project_id": str(uuid.uuid4()),
                     "archive_id": str(uuid.uuid4())}).encode(), "not found"),
    ],
    ids=["not-json", "not-object", "bad-uuid", "unknown-archive"],
)
async def test_poison_message_dead_lettered_with_reason(amqp_url, body, reason):
    message_id = f"poison-{uuid.uuid4()}"
    await _publish(amqp_url, body, message_id)
    dead = await _take_dead_letter(amqp_url, message_id)
    assert dead is not None, "the poison message never reached reflector.analyze.dlq"
    assert dead.body == body
    recorded = dead.headers["x-aiswa-dead-letter-reason"]
    assert "poison message" in recorded
    assert reason in recorded
    assert dead.headers["x-aiswa-source-queue"] == "reflector.analyze"


def _report_rows(database, run_id: str) -> tuple[int, int, int]:
    connection = database("reflector")
    reports = connection.execute("SELECT count(*) FROM reports WHERE run_id = %s", (run_id,)).fetchone()[0]
    files = connection.execute("SELECT count(*) FROM files WHERE run_id = %s", (run_id,)).fetchone()[0]
    functions = connection.execute("SELECT count(*) FROM functions WHERE run_id = %s", (run_id,)).fetchone()[0]
    return reports, files, functions


async def _next_completed_event(amqp_url: str, run_id: str, trigger, timeout: float = 60.0):
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        events = await channel.get_exchange("aiswa.events")
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(events, routing_key="analysis.completed")
        await trigger()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.2)
                continue
            payload = json.loads(message.body)
            if payload["run_id"] == run_id:
                return payload
    return None


async def test_redelivered_task_does_not_duplicate(admin, project, amqp_url, database):
    archive = admin.upload(project["project_id"], "json.tar.gz", pack_python([STDLIB / "json"]))
    run = wait_run(admin, admin.start_run(project["project_id"], archive["archive_id"])["run_id"])
    assert run["state"] == "RUN_STATE_COMPLETED"
    before = _report_rows(database, run["run_id"])
    assert before[0] == 1
    assert before[1] == archive["file_count"]
    assert before[2] > 0
    report_before = admin.report(run["run_id"])

    task = {"run_id": run["run_id"], "project_id": project["project_id"],
            "archive_id": archive["archive_id"], "requested_by": str(uuid.uuid4())}
    event = await _next_completed_event(
        amqp_url, run["run_id"],
        lambda: _publish(amqp_url, json.dumps(task).encode(), run["run_id"]),
    )
    assert event is not None, "the redelivered task was not acknowledged with an event"
    assert event["summary"]["files"] == report_before["summary"]["files"]
    assert event["summary"]["functions"] == report_before["summary"]["functions"]
    assert _report_rows(database, run["run_id"]) == before
    assert admin.report(run["run_id"]) == report_before


def test_worker_killed_mid_run_loses_nothing(admin, project, layout, database):
    folders = [STDLIB / name for name in ("email", "asyncio", "json", "logging", "http",
                                           "concurrent", "importlib", "xml")]
    content = pack_python(folders)
    archive = admin.upload(project["project_id"], "big.tar.gz", content)
    reference = wait_run(admin, admin.start_run(project["project_id"], archive["archive_id"])["run_id"])
    assert reference["state"] == "RUN_STATE_COMPLETED"
    expected = admin.report(reference["run_id"])

    # The worker is frozen (SIGSTOP) before the task arrives, then let run in
    # short slices until the run shows progress while the reflector's
    # database contains nothing of it yet: only then is it killed. The Rust
    # engine analyses this archive in about a second, so a plain kill after
    # the first progress event often lands after the run was stored.
    pid_before = supervisorctl(layout, "pid", "reflector").strip()
    pid = int(pid_before)
    killed = None
    for slice_seconds in (0.3, 0.15, 0.08, 0.04, 0.02):
        os.kill(pid, signal.SIGSTOP)
        run = admin.start_run(project["project_id"], archive["archive_id"])
        time.sleep(0.5)
        for _ in range(40):
            os.kill(pid, signal.SIGCONT)
            time.sleep(slice_seconds)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.5)  # projects applies the progress events already sent
            if _report_rows(database, run["run_id"]) != (0, 0, 0):
                break  # stored within one slice: try again with shorter slices
            if admin.run(run["run_id"])["files_done"] > 0:
                killed = run
                os.kill(pid, signal.SIGKILL)
                break
        if killed:
            break
        os.kill(pid, signal.SIGCONT)
        wait_run(admin, run["run_id"])
    else:
        pytest.fail("the worker stored every run within one slice of 20 ms")

    finished = wait_run(admin, run["run_id"])
    assert finished["state"] == "RUN_STATE_COMPLETED"
    assert supervisorctl(layout, "pid", "reflector").strip() != pid_before
    report = admin.report(run["run_id"])
    assert report["summary"] == expected["summary"]
    assert report["files"] == expected["files"]
