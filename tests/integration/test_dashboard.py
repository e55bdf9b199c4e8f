"""The dashboard on the running platform: a run's progress reaches a gRPC subscriber.

The subscriber connects through the gateway (HTTPS, JWT) as a viewer, so the
call crosses the gateway's sidecar, the dashboard's sidecar and its OPA. The
events come from the Python services over RabbitMQ.
"""

from __future__ import annotations

import json
import queue
import threading

import grpc
import pytest

from aiswa.dashboard.v1 import dashboard_pb2, dashboard_pb2_grpc
from aiswa.projects.v1 import projects_pb2
from conftest import STDLIB, pack_python, python_files, wait_run

COMPLETED = projects_pb2.RunState.Name(projects_pb2.RUN_STATE_COMPLETED)


def _stub(gateway_url: str, ca_cert: str) -> tuple[grpc.Channel, dashboard_pb2_grpc.DashboardServiceStub]:
    credentials = grpc.ssl_channel_credentials(root_certificates=open(ca_cert, "rb").read())
    channel = grpc.secure_channel(gateway_url.removeprefix("https://"), credentials)
    return channel, dashboard_pb2_grpc.DashboardServiceStub(channel)


def _token(client) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {json.loads(client.token_file.read_text())['access_token']}")]


def _collect(stream, received: queue.Queue) -> None:
    try:
        for update in stream:
            received.put(update)
    except grpc.RpcError as error:
        received.put(error)


def test_run_progress_reaches_grpc_subscriber(gateway_url, ca_cert, make_user, admin, project):
    viewer, _ = make_user("viewer")
    channel, stub = _stub(gateway_url, ca_cert)
    stream = stub.SubscribeToUpdates(
        dashboard_pb2.SubscribeToUpdatesRequest(metric_types=["run_progress"]),
        metadata=_token(viewer), timeout=60)
    received: queue.Queue = queue.Queue()
    threading.Thread(target=_collect, args=(stream, received), daemon=True).start()

    archive = admin.upload(project["project_id"], "json.tar.gz", pack_python([STDLIB / "json"]))
    run = admin.start_run(project["project_id"], archive["archive_id"])
    assert wait_run(admin, run["run_id"])["state"] == COMPLETED

    states, types = [], set()
    while COMPLETED not in states:
        update = received.get(timeout=15)
        if isinstance(update, grpc.RpcError):
            pytest.fail(f"the stream ended with {update.code().name}: {update.details()}")
        types.add(update.metric_type)
        if update.run.run_id == run["run_id"]:
            states.append(projects_pb2.RunState.Name(update.run.state))
            last = update
    stream.cancel()
    channel.close()
    assert types == {"run_progress"}
    assert last.run.files_done == last.run.files_total == len(python_files(STDLIB / "json"))
    assert last.run.project_id == project["project_id"]


def test_unknown_metric_type_rejected(gateway_url, ca_cert, admin):
    channel, stub = _stub(gateway_url, ca_cert)
    with pytest.raises(grpc.RpcError) as failure:
        next(stub.SubscribeToUpdates(
            dashboard_pb2.SubscribeToUpdatesRequest(metric_types=["cpu_temperature"]),
            metadata=_token(admin), timeout=10))
    channel.close()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cpu_temperature" in failure.value.details()


def test_subscription_without_token_rejected(gateway_url, ca_cert):
    channel, stub = _stub(gateway_url, ca_cert)
    with pytest.raises(grpc.RpcError) as failure:
        next(stub.SubscribeToUpdates(dashboard_pb2.SubscribeToUpdatesRequest(), timeout=10))
    channel.close()
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
