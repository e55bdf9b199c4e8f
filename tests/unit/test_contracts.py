"""Contracts: the generated OpenAPI file is current, every method is routed or internal."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from aiswa_mesh.protogen import generate_openapi
from aiswa_runtime import load_topology

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / ".state" / "tools" / "go" / "bin" / "protoc-gen-openapiv2"


def _services() -> dict[str, descriptor_pb2.ServiceDescriptorProto]:
    descriptors = descriptor_pb2.FileDescriptorSet()
    descriptors.ParseFromString((ROOT / ".state" / "gen" / "aiswa.pb").read_bytes())
    return {
        f"{file.package}.{service.name}": service
        for file in descriptors.file if file.package.startswith("aiswa.")
        for service in file.service
    }


@pytest.mark.skipif(not PLUGIN.exists(), reason="`make setup` installs protoc-gen-openapiv2")
def test_openapi_document_is_current(tmp_path):
    fresh = generate_openapi(ROOT, PLUGIN, tmp_path)
    committed = ROOT / "docs" / "api" / "aiswa.swagger.json"
    assert fresh.read_text() == committed.read_text(), (
        "docs/api/aiswa.swagger.json is stale: run `make setup` and commit it"
    )


def test_every_method_routed_or_internal():
    topology = load_topology(str(ROOT / "mesh" / "topology.yaml"))
    services = _services()
    assert set(services) == {w["grpc_service"] for w in topology["workloads"].values()}
    for workload in topology["workloads"].values():
        service = services[workload["grpc_service"]]
        internal = set(workload.get("internal_methods", []))
        names = {method.name for method in service.method}
        assert internal <= names, f"unknown internal methods of {service.name}: {internal - names}"
        for method in service.method:
            has_http = method.options.HasExtension(annotations_pb2.http)
            if method.name in internal:
                assert not has_http, f"{service.name}.{method.name} is internal but has a REST route"
            else:
                assert has_http, f"{service.name}.{method.name} has no google.api.http route"


def test_public_methods_exist():
    topology = load_topology(str(ROOT / "mesh" / "topology.yaml"))
    services = _services()
    for workload in topology["workloads"].values():
        names = {m.name for m in services[workload["grpc_service"]].method}
        assert set(workload.get("public_methods", [])) <= names
