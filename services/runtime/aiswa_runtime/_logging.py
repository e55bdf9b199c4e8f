from __future__ import annotations

import contextvars
import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "request_id", default=""
)
caller_var: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")

_service_name = "aiswa"


class _ContextFilter(logging.Filter):
    """Add the workload, request id, trace id and caller to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = _service_name
        record.request_id = request_id_var.get()
        record.caller = caller_var.get()
        span = trace.get_current_span().get_span_context()
        record.trace_id = format(span.trace_id, "032x") if span.is_valid else ""
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send JSON log lines to stderr, each with service, request and trace ids."""
    global _service_name
    _service_name = service
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s "
            "%(request_id)s %(trace_id)s %(caller)s",
            rename_fields={"levelname": "level", "asctime": "time"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aio-pika and aiormq log every reconnect attempt at INFO.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
