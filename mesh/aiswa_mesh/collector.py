"""A minimal OpenTelemetry trace collector: OTLP/gRPC in, JSON lines out.

Envoy and every service export spans to it, so one file holds whole traces
across the gateway, the services and the message queue. Usage:
``python -m aiswa_mesh.collector --address 127.0.0.1:54317 --output traces.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

log = logging.getLogger("aiswa.collector")


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in {"string_value", "bool_value", "int_value",
                                            "double_value"} else str(value)


def span_records(request: trace_service_pb2.ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """Flatten an OTLP export request into one dict per span."""
    records = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                records.append({
                    "service": resource.get("service.name", ""),
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": span.kind,
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "status": span.status.code,
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                })
    return records


class JsonLinesCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, output: Path) -> None:
        self._output = output
        output.parent.mkdir(parents=True, exist_ok=True)

    async def Export(self, request, context):  # noqa: N802 - gRPC method name
        records = span_records(request)
        with self._output.open("a", encoding="utf-8") as stream:
            for record in records:
                stream.write(json.dumps(record) + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(addresses: list[str], output: Path) -> None:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(JsonLinesCollector(output), server)
    for address in addresses:
        if server.add_insecure_port(address) == 0:
            raise SystemExit(f"collector: cannot bind {address}; is another process using it?")
    await server.start()
    log.warning("collector started on %s, writing %s", ", ".join(addresses), output)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(5)
    log.warning("collector stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True, action="append",
                        help="HOST:PORT to listen on; repeat it for more addresses")
    parser.add_argument("--output", type=Path, required=True, help="JSON lines file to append to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.address, args.output))


if __name__ == "__main__":
    main()
