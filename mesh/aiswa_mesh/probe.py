"""Probe a server from inside a pod, where the launcher and `aiswa check` cannot connect.

Run inside a pod with ``ip netns exec <pod> python -m aiswa_mesh.probe ...``
(aiswa_mesh._network.Network.command builds that prefix):

- ``http URL``: wait until URL returns 200;
- ``grpc-health HOST:PORT``: wait until the gRPC health service reports SERVING;
- ``connect HOST:PORT``: try one TCP connection and print ``open`` or the error.

``http`` and ``grpc-health`` retry until ``--timeout`` and exit 1 with the
last error. ``connect`` exits 0 when the port is open and 1 otherwise.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import urllib.request


def _wait(check, timeout: float) -> str | None:  # type: ignore[no-untyped-def]
    """Call ``check`` until it returns None or ``timeout`` passes; return its last error."""
    deadline = time.monotonic() + timeout
    while True:
        error = check()
        if error is None or time.monotonic() >= deadline:
            return error
        time.sleep(0.3)


def _http(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return None if reply.status == 200 else f"status {reply.status}"
    except OSError as exc:
        return str(exc)


def _grpc_health(target: str) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError as exc:
            return exc.code().name
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"probe: {target!r} is not HOST:PORT, for example 127.0.0.1:50051")
    return host, int(port)


def connect(host: str, port: int, timeout: float = 2.0) -> str:
    """Return ``open`` when a TCP connection to host:port succeeds, else the error's name."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except OSError as exc:
        return type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiswa_mesh.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["http", "grpc-health", "connect"])
    parser.add_argument("target", help="a URL for http, HOST:PORT otherwise")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to keep retrying http and grpc-health (default 60)")
    args = parser.parse_args(argv)
    if args.kind == "connect":
        result = connect(*_split(args.target))
        print(result)
        return 0 if result == "open" else 1
    if args.kind == "http":
        error = _wait(lambda: _http(args.target), args.timeout)
    else:
        target = "%s:%d" % _split(args.target)
        error = _wait(lambda: _grpc_health(target), args.timeout)
    if error is not None:
        print(f"probe: {args.target} not ready within {args.timeout:.0f} s (last: {error})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
