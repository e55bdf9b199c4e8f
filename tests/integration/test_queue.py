"""Task queue guarantees: dead letters, idempotent redelivery, a worker killed mid-run."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
import uuid

import aio_pika
import pytest

from conftest import STDLIB, supervisorctl


def _pack(folders) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for folder in folders:
            for path in sorted(folder.rglob("*.py")):
                if "__pycache__" not in path.parts:
                    archive.add(path, arcname=f"{folder.name}/{path.relative_to(folder)}")
    return buffer.getvalue()


def _wait_run(client, run_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.run(run_id)
        if run["state"] in {"RUN_STATE_COMPLETED", "RUN_STATE_FAILED"}:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not finish within {timeout} s: {run}")


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
    archive = admin.upload(project["project_id"], "json.tar.gz", _pack([STDLIB / "json"]))
    run = _wait_run(admin, admin.start_run(project["project_id"], archive["archive_id"])["run_id"])
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


def test_worker_killed_mid_run_loses_nothing(admin, project, layout):
    folders = [STDLIB / name for name in ("email", "asyncio", "json", "logging", "http",
                                           "concurrent", "importlib", "xml")]
    content = _pack(folders)
    archive = admin.upload(project["project_id"], "big.tar.gz", content)
    reference = _wait_run(admin, admin.start_run(project["project_id"], archive["archive_id"])["run_id"])
    assert reference["state"] == "RUN_STATE_COMPLETED"
    expected = admin.report(reference["run_id"])

    run = admin.start_run(project["project_id"], archive["archive_id"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = admin.run(run["run_id"])
        if current["state"] == "RUN_STATE_RUNNING" and current["files_done"] > 0:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"run {run['run_id']} never reached RUNNING with progress")
    assert current["files_done"] < current["files_total"], "run finished before it could be killed"
    pid_before = supervisorctl(layout, "pid", "reflector").strip()
    supervisorctl(layout, "signal", "KILL", "reflector")

    finished = _wait_run(admin, run["run_id"])
    assert finished["state"] == "RUN_STATE_COMPLETED"
    assert supervisorctl(layout, "pid", "reflector").strip() != pid_before
    report = admin.report(run["run_id"])
    assert report["summary"] == expected["summary"]
    assert report["files"] == expected["files"]
