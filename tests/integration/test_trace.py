"""One trace covers the gateway, projects, the task queue and the reflector."""

from __future__ import annotations

import io
import json
import secrets
import ssl
import tarfile
import time

import httpx


def _archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        content = b"def f(x):\n    return 1 if x else 2\n"
        info = tarfile.TarInfo("pkg/mod.py")
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _spans(path, trace_id: str) -> list[dict]:
    if not path.exists():
        return []
    spans = []
    with path.open() as stream:
        for line in stream:
            record = json.loads(line)
            if record["trace_id"] == trace_id:
                spans.append(record)
    return spans


def test_trace_spans_gateway_projects_queue_reflector(admin, project, gateway_url, ca_cert, layout):
    archive = admin.upload(project["project_id"], "t.tar.gz", _archive())
    trace_id = secrets.token_hex(16)
    token = json.loads(admin.token_file.read_text())["access_token"]
    reply = httpx.post(
        f"{gateway_url}/v1/projects/{project['project_id']}/runs",
        json={"archive_id": archive["archive_id"]}, verify=ssl.create_default_context(cafile=ca_cert),
        headers={"authorization": f"Bearer {token}",
                 "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
    )
    assert reply.status_code == 200, reply.text
    run_id = reply.json()["run_id"]

    spans_file = layout.traces / "spans.jsonl"
    wanted = {"gateway", "projects", "reflector"}
    deadline = time.monotonic() + 60
    spans: list[dict] = []
    while time.monotonic() < deadline:
        spans = _spans(spans_file, trace_id)
        names = {span["name"] for span in spans}
        if wanted <= {span["service"] for span in spans} and "reflector.analyze process" in names:
            break
        time.sleep(1)
    services = {span["service"] for span in spans}
    names = {span["name"] for span in spans}
    assert wanted <= services, f"services in trace {trace_id}: {services}"
    assert "reflector.analyze publish" in names
    assert "reflector.analyze process" in names
    assert any(name.endswith("ProjectsService/StartRun") for name in names)
    assert any(name.endswith("ProjectsService/ReadArchive") for name in names)
    publish = next(s for s in spans if s["name"] == "reflector.analyze publish")
    process = next(s for s in spans if s["name"] == "reflector.analyze process")
    assert process["parent_span_id"] == publish["span_id"]
    assert admin.run(run_id)["run_id"] == run_id
