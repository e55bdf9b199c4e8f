from __future__ import annotations

import json
import logging
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from ._config import ServiceConfig

log = logging.getLogger(__name__)
_provider: TracerProvider | None = None


class JsonLinesSpanExporter(SpanExporter):
    """Append finished spans to a file, one JSON object a line."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._path.open("a", encoding="utf-8") as stream:
            for span in spans:
                stream.write(json.dumps(json.loads(span.to_json())) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def configure_tracing(config: ServiceConfig) -> None:
    """Install the tracer provider and the gRPC instrumentation."""
    global _provider
    if _provider is not None:
        return
    resource = Resource.create(
        {"service.name": config.service, "service.namespace": config.namespace}
    )
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter | None = None
    if config.trace_exporter == "console":
        exporter = ConsoleSpanExporter()
    elif config.trace_exporter == "file":
        path = config.trace_file or config.state_dir / "traces" / f"{config.service}.jsonl"
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    elif config.trace_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter(endpoint=config.trace_endpoint, insecure=True)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider

    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
    )

    GrpcAioInstrumentorServer().instrument()
    GrpcAioInstrumentorClient().instrument()
    log.info(
        "tracing configured",
        extra={"exporter": config.trace_exporter, "endpoint": config.trace_endpoint},
    )


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


def inject_headers(headers: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Write the current trace context (W3C traceparent) into message headers."""
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, Any] | None) -> Any:
    """Read a trace context written by :func:`inject_headers`."""
    carrier = {key: str(value) for key, value in (headers or {}).items()}
    return propagate.extract(carrier)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)
