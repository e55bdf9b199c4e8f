"""Measure the latency that the mesh adds to one service-to-service call (one hop).

One hop is reflector calling projects' GetProject, as on the platform. Each
path below calls the same grpc.aio app, in a process of its own, at the same
fixed request rate:

- direct: a plaintext call to the app's port, with no authorization.
- sidecars: through reflector's outbound sidecar and projects' inbound sidecar
  (two real Envoys, mTLS, RBAC on the peer identity) to the same app, still
  with no authorization.
- mesh: the same two sidecars to an app that runs the runtime's
  AuthorizationInterceptor, which asks a real OPA serving policies/rego/ about
  every call. This is what every call on the platform goes through.
- ext-authz: the same two sidecars to the app without the interceptor, but
  projects' sidecar asks OPA itself before it forwards a call: Envoy's
  ext_authz filter calls an OPA built with an ext_authz gRPC server
  (benchmarks/opa-ext-authz, standing in for OPA's Envoy plugin), which decides
  with the same policy and input and logs the decision the same way. This is
  where a user of Envoy and OPA would first put the check. It cannot be the
  platform's, because Linkerd's proxy, the sidecar on Kubernetes, has no such
  hook.
- opa: the interceptor's decision alone (an HTTP POST to the local OPA with
  aiohttp), timed in this process.
- opa-httpx: the same POST with httpx, the client the interceptor used before
  and the one a user of this runtime would first pick; the summary gives the
  ratio of the two.
- opa-go-default: the aiohttp POST to a second OPA that runs with Go's default
  GOMAXPROCS (the number of CPU cores) instead of the platform's GOMAXPROCS=1
  (aiswa_mesh._mesh.OPA_ENVIRONMENT); the summary gives this ratio too.

Sidecars and OPA run with the same commands as under `make up`
(aiswa_mesh.envoy_sidecar.sidecar_command, aiswa_mesh._mesh.opa_command), with
certificates from a throwaway CA (aiswa_mesh.localca) on free loopback ports.
It needs no running platform. The paths take turns in short rounds, so that
other load on the machine affects all of them alike. The two paths that
authorize (mesh, ext-authz) and the three decision paths (opa, opa-httpx,
opa-go-default) take turns call by call within their round, at the same total
rate, because their differences are smaller than the drift of this machine's
speed between rounds. Before it measures, the benchmark checks that a call
that the policy denies ends with the same PERMISSION_DENIED and reason on
both authorizing paths. Run from the repository root after `make setup` and
scripts/build-opa-ext-authz.sh (`make bench` runs both):

    .state/venv/bin/python benchmarks/bench_mesh.py

It prints a table and writes the figures to .state/bench/mesh.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc
import httpx
import yaml

from aiswa_mesh._mesh import OPA_ENVIRONMENT, opa_command
from aiswa_mesh.envoy_sidecar import (
    INBOUND_LISTENER,
    envoy_binary,
    identity_dns,
    sidecar_command,
    write_certs_atomically,
    write_sidecar_config,
)
from aiswa_mesh.localca import CertificateAuthority, free_port
from aiswa_runtime._auth import JWT_PAYLOAD_HEADER
from aiswa_runtime._authz import CALLER_HEADER, DECISION_PATH, AuthorizationInterceptor

ROOT = Path(__file__).resolve().parent.parent
OPA = ROOT / ".state" / "tools" / "go" / "bin" / "opa"
EXT_AUTHZ_OPA = ROOT / ".state" / "tools" / "go" / "bin" / "opa-ext-authz"
METHOD = "/aiswa.projects.v1.ProjectsService/GetProject"
# A method of projects that the policy does not grant reflector.
DENIED_METHOD = "/aiswa.projects.v1.ProjectsService/DeleteProject"
SERVICE, NAME = METHOD.strip("/").split("/")
NAMESPACE = "aiswa"
READY_LINE = "bench app ready"
# Paths measured together take turns call by call, so that the machine's drift in
# speed affects them alike. Groups take turns in rounds.
GROUPS = (("direct",), ("sidecars",), ("mesh", "ext-authz"), ("opa", "opa-httpx", "opa-go-default"))
_TYPE_PREFIX = "type.googleapis.com/"


# --- the app, in its own process -------------------------------------------------


async def _serve(plain_port: int, authz_port: int, opa_url: str) -> None:
    async def get_project(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    # The app serves DENIED_METHOD too: the interceptor leaves a method that the
    # server does not serve to grpc, which returns UNIMPLEMENTED.
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {name: grpc.unary_unary_rpc_method_handler(get_project)
                  for name in (NAME, DENIED_METHOD.rsplit("/", 1)[1])})
    authz = AuthorizationInterceptor("projects", opa_url)
    plain = grpc.aio.server()
    guarded = grpc.aio.server(interceptors=[authz])
    for server, port in ((plain, plain_port), (guarded, authz_port)):
        server.add_generic_rpc_handlers([handler])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
    print(READY_LINE, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for server in (plain, guarded):
        await server.stop(grace=None)
    await authz.aclose()


# --- processes -------------------------------------------------------------------


class Processes:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str], **kwargs) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=kwargs.pop("stdout", log),
                                   stderr=log, start_new_session=True, **kwargs)
        self.running.append((name, process))
        return process

    def check(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                log = (self.folder / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with code {process.returncode}:\n{log}")

    def stop(self) -> None:
        for _, process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in self.running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


async def _wait_http(url: str, processes: Processes, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            processes.check()
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{name} did not return HTTP 200 at {url} within {timeout:.0f} s; "
                       f"see the logs in {processes.folder}")


class Bed:
    """The app, OPA and two pairs of sidecars on free loopback ports."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes = Processes(folder)
        self.ports: dict[str, int] = {}
        self.opa_url = ""
        self.opa_go_default_url = ""

    async def start(self) -> None:
        topology = yaml.safe_load((ROOT / "mesh" / "topology.yaml").read_text())
        for workload in topology["workloads"].values():
            workload["port"] = None
        ca = CertificateAuthority("aiswa bench mesh root")

        opa_port, default_port = free_port(), free_port()
        self.opa_url = f"http://127.0.0.1:{opa_port}"
        self.opa_go_default_url = f"http://127.0.0.1:{default_port}"
        self.processes.start("opa", opa_command(str(OPA), ("127.0.0.1", opa_port)),
                             env={**os.environ, **OPA_ENVIRONMENT})
        go_default = {name: value for name, value in os.environ.items()
                      if name not in OPA_ENVIRONMENT}
        self.processes.start("opa-go-default", opa_command(str(OPA), ("127.0.0.1", default_port)),
                             env=go_default)
        await _wait_http(f"{self.opa_url}/health", self.processes, "OPA")
        await _wait_http(f"{self.opa_go_default_url}/health", self.processes, "OPA")

        plain_port, authz_port = free_port(), free_port()
        app = self.processes.start(
            "app", [sys.executable, __file__, "serve", str(plain_port), str(authz_port),
                    self.opa_url], stdout=subprocess.PIPE)
        assert app.stdout is not None
        line = await asyncio.to_thread(app.stdout.readline)
        if line.decode().strip() != READY_LINE:
            self.processes.check()
            raise RuntimeError(f"the bench app printed {line!r} instead of {READY_LINE!r}")
        self.ports["direct"] = plain_port

        ext_authz_port, ext_authz_http = free_port(), free_port()
        self.processes.start("opa-ext-authz", _ext_authz_command(ext_authz_http, ext_authz_port),
                             env={**os.environ, **OPA_ENVIRONMENT})
        # ?plugins: healthy only once the ext_authz listener is up.
        await _wait_http(f"http://127.0.0.1:{ext_authz_http}/health?plugins", self.processes,
                         "the ext_authz OPA")

        admins = []
        for path, app_port in (("sidecars", plain_port), ("mesh", authz_port),
                               ("ext-authz", plain_port)):
            inbound, outbound = free_port(), free_port()
            for workload, inbound_side, upstreams in (
                ("projects", (("127.0.0.1", inbound), ("127.0.0.1", app_port)), {}),
                # Reflector's own inbound side is not called here.
                ("reflector", (("127.0.0.1", free_port()), ("127.0.0.1", plain_port)),
                 {"projects": ("127.0.0.1", inbound, outbound)}),
            ):
                folder = self.folder / f"{path}-{workload}"
                folder.mkdir()
                credentials = ca.issue(workload, NAMESPACE)
                certs = folder / "certs"
                write_certs_atomically(certs, credentials.cert_pem, credentials.key_pem, ca.cert_pem)
                admin = free_port()
                config = write_sidecar_config(
                    topology, workload, path=folder / "sidecar.yaml",
                    inbound=inbound_side[0], app=inbound_side[1], upstreams=upstreams,
                    certs_dir=certs, admin=("127.0.0.1", admin), access_log=folder / "access.log")
                if path == "ext-authz" and workload == "projects":
                    _add_ext_authz(config, ext_authz_port)
                self.processes.start(f"{path}-{workload}",
                                     sidecar_command(config, log_path=folder / "envoy.log"))
                admins.append(admin)
            self.ports[path] = outbound
        for admin in admins:
            await _wait_http(f"http://127.0.0.1:{admin}/ready", self.processes, "a sidecar")

    def stop(self) -> None:
        self.processes.stop()


def _ext_authz_command(http_port: int, grpc_port: int) -> list[str]:
    """Return the command of the OPA that projects' sidecar queries.

    It is the platform's OPA command line, decision log included, plus the
    ext_authz gRPC listener.
    """
    return opa_command(str(EXT_AUTHZ_OPA), ("127.0.0.1", http_port), (
        f"plugins.aiswa_ext_authz.addr=127.0.0.1:{grpc_port}",
        "plugins.aiswa_ext_authz.destination=projects",
        f"plugins.aiswa_ext_authz.claims_header={JWT_PAYLOAD_HEADER}",
    ))


def _add_ext_authz(config_path: Path, grpc_port: int) -> None:
    """Make the inbound listener of the sidecar at ``config_path`` ask OPA over gRPC first.

    The filter fails closed (failure_mode_allow false, 403 on an error) within
    the interceptor's default deadline of 250 ms.
    """
    config = yaml.safe_load(config_path.read_text())
    inbound = next(listener for listener in config["static_resources"]["listeners"]
                   if listener["name"] == INBOUND_LISTENER)
    for chain in inbound["filter_chains"]:
        for network_filter in chain["filters"]:
            if network_filter["name"] == "envoy.filters.network.http_connection_manager":
                network_filter["typed_config"]["http_filters"].insert(0, {
                    "name": "envoy.filters.http.ext_authz",
                    "typed_config": {
                        "@type": _TYPE_PREFIX
                        + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                        "transport_api_version": "V3",
                        "grpc_service": {"envoy_grpc": {"cluster_name": "opa_ext_authz"},
                                         "timeout": "0.25s"},
                        "failure_mode_allow": False,
                    },
                })
    config["static_resources"]["clusters"].append({
        "name": "opa_ext_authz",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "load_assignment": {"cluster_name": "opa_ext_authz", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": grpc_port}}}},
        ]}]},
    })
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


async def check_denials(bed: Bed) -> str:
    """Return the reason for DENIED_METHOD, after checking that both authorizing paths give it.

    Raises RuntimeError when a path lets the call through or ends it another way,
    because then the two paths would not be doing the same work.
    """
    outcomes = {}
    for path in ("mesh", "ext-authz"):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bed.ports[path]}") as channel:
            try:
                await channel.unary_unary(DENIED_METHOD)(b"x" * 16, timeout=2.0)
            except grpc.aio.AioRpcError as error:
                outcomes[path] = (error.code(), error.details())
            else:
                raise RuntimeError(f"the {path} path let reflector call {DENIED_METHOD}, "
                                   "which the policy denies")
    if len(set(outcomes.values())) != 1 or outcomes["mesh"][0] != grpc.StatusCode.PERMISSION_DENIED:
        raise RuntimeError(f"the authorizing paths ended {DENIED_METHOD} differently: {outcomes}")
    return outcomes["mesh"][1]


# --- measuring -------------------------------------------------------------------


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def _paced(calls: list, rate: float,
                 count: int) -> list[tuple[list[float], list[BaseException]]]:
    """Start ``count`` calls of each of ``calls``, taking turns call by call, at ``rate`` per second.

    Return, for each of ``calls``, the latency in ms of each call that
    succeeded, and the errors.
    """
    results: list[tuple[list[float], list[BaseException]]] = [([], []) for _ in calls]

    async def one(position: int) -> None:
        latencies, errors = results[position]
        started = time.perf_counter()
        try:
            await calls[position]()
        except Exception as exc:  # noqa: BLE001 - counted and reported below
            errors.append(exc)
            return
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    begin = time.perf_counter()
    for index in range(count * len(calls)):
        delay = begin + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index % len(calls))))
    await asyncio.gather(*tasks)
    return results


async def measure(bed: Bed, rate: float, count: int,
                  rounds: int) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Return the latencies in ms and the errors of every path."""
    samples: dict[str, list[float]] = {path: [] for group in GROUPS for path in group}
    failures: dict[str, list[str]] = {path: [] for path in samples}
    channels = {path: grpc.aio.insecure_channel(f"127.0.0.1:{port}")
                for path, port in bed.ports.items()}
    stubs = {path: channel.unary_unary(METHOD) for path, channel in channels.items()}
    decider = AuthorizationInterceptor("projects", bed.opa_url)
    go_default_decider = AuthorizationInterceptor("projects", bed.opa_go_default_url)
    caller = identity_dns("reflector", NAMESPACE)
    metadata = ((CALLER_HEADER, caller),)

    def decide_with(interceptor: AuthorizationInterceptor):
        async def decide() -> None:
            decision = await interceptor.decide(METHOD, caller, metadata, timeout=1.0)
            if not decision.allow:
                raise RuntimeError(f"OPA denied the benchmark call: {decision.reason}")

        return decide

    alternative = httpx.AsyncClient(trust_env=False, timeout=1.0)
    document = {"input": {"caller": caller, "destination": "projects", "method": METHOD}}

    async def decide_with_httpx() -> None:
        reply = await alternative.post(bed.opa_url + DECISION_PATH, json=document)
        if reply.json()["result"]["allow"] is not True:
            raise RuntimeError(f"OPA denied the benchmark call: {reply.text[:200]}")

    def caller_of(path: str):
        if path == "opa":
            return decide_with(decider)
        if path == "opa-go-default":
            return decide_with(go_default_decider)
        if path == "opa-httpx":
            return decide_with_httpx
        return lambda: stubs[path](b"x" * 16, timeout=2.0)

    try:
        # Warm up: connections, TLS sessions and OPA's compiled query.
        for group in GROUPS:
            await _paced([caller_of(path) for path in group], rate, min(count, 200))
        for _ in range(rounds):
            for group in GROUPS:
                results = await _paced([caller_of(path) for path in group], rate, count)
                for path, (latencies, errors) in zip(group, results, strict=True):
                    samples[path] += latencies
                    failures[path] += [repr(error) for error in errors]
    finally:
        for channel in channels.values():
            await channel.close()
        await decider.aclose()
        await go_default_decider.aclose()
        await alternative.aclose()
    return samples, failures


def _ratio(part: float, whole: float) -> float | None:
    # None (null in the JSON file) when the service's check cost nothing measurable.
    return part / whole if whole > 0 else None


def _summary(samples: dict[str, list[float]], failures: dict[str, list[str]], rate: float,
             denial: str) -> dict:
    figures = {}
    for path, values in samples.items():
        ordered = sorted(values)
        # A failed call has no latency; it is counted instead, with its first error.
        figures[path] = {"calls": len(ordered) + len(failures[path]),
                         "failed": len(failures[path]),
                         "first_error": failures[path][0] if failures[path] else None,
                         "p50_ms": _percentile(ordered, 0.50),
                         "p99_ms": _percentile(ordered, 0.99)}
    direct = figures["direct"]
    added = {
        path: {"p50_ms": figures[path]["p50_ms"] - direct["p50_ms"],
               "p99_ms": figures[path]["p99_ms"] - direct["p99_ms"]}
        for path in ("sidecars", "mesh", "ext-authz")
    }
    return {
        "benchmark": "mesh hop latency",
        "method": METHOD,
        "caller": "reflector",
        "destination": "projects",
        "rate_per_second": rate,
        "latency": figures,
        "added_per_hop": added,
        # How the authorization's share of a hop compares when the sidecar decides.
        "ext_authz_to_interceptor_p50": _ratio(
            added["ext-authz"]["p50_ms"] - added["sidecars"]["p50_ms"],
            added["mesh"]["p50_ms"] - added["sidecars"]["p50_ms"]),
        "denial": denial,
        # How much longer the same decision takes with httpx than with aiohttp.
        "opa_httpx_to_aiohttp_p50": figures["opa-httpx"]["p50_ms"] / figures["opa"]["p50_ms"],
        # How much longer a decision takes from an OPA with Go's default GOMAXPROCS.
        "opa_go_default_to_one_thread_p50": (figures["opa-go-default"]["p50_ms"]
                                             / figures["opa"]["p50_ms"]),
        "opa_go_default_to_one_thread_p99": (figures["opa-go-default"]["p99_ms"]
                                             / figures["opa"]["p99_ms"]),
        "goal_added_per_hop": {"p50_ms": 0.8, "p99_ms": 1.2},
        "meets_goal": (added["mesh"]["p50_ms"] <= 0.8 and added["mesh"]["p99_ms"] <= 1.2
                       and figures["mesh"]["failed"] == 0),
        "envoy": str(envoy_binary()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _table(result: dict) -> str:
    load = result.get("load_average_before")
    rows = [f"mesh hop latency, {result['method']} at {result['rate_per_second']:.0f} calls/s"
            + (f", load average {load[0]:.2f} before the run" if load else ""),
            f"{'path':<14} {'calls':>6} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8}"]
    for path, figures in result["latency"].items():
        added = result["added_per_hop"].get(path)
        extra = (f"{added['p50_ms']:>8.3f} {added['p99_ms']:>8.3f}" if added
                 else f"{'':>8} {'':>8}")
        rows.append(f"{path:<14} {figures['calls']:>6} {figures['failed']:>6} {figures['p50_ms']:>8.3f} "
                    f"{figures['p99_ms']:>8.3f} {extra}")
    ratio = result["ext_authz_to_interceptor_p50"]
    if ratio is None:
        rows.append("the service's check (mesh) added nothing over the sidecars at p50, so "
                    "there is no ratio for the sidecar's (ext-authz)")
    else:
        rows.append(f"the authorization adds {ratio:.2f}x as much to a hop (p50) when the "
                    "sidecar queries OPA (ext-authz) as when the service does (mesh)")
    rows.append(f"an OPA decision takes {result['opa_httpx_to_aiohttp_p50']:.2f}x as long (p50) "
                "with httpx as with aiohttp")
    rows.append(f"an OPA with Go's default GOMAXPROCS takes "
                f"{result['opa_go_default_to_one_thread_p50']:.2f}x as long (p50) and "
                f"{result['opa_go_default_to_one_thread_p99']:.2f}x (p99) as with GOMAXPROCS=1")
    goal = result["goal_added_per_hop"]
    rows.append(f"goal for mesh: at most +{goal['p50_ms']} ms p50 and +{goal['p99_ms']} ms p99 "
                f"per hop; met: {'yes' if result['meets_goal'] else 'no'}")
    return "\n".join(rows)


async def _main(args: argparse.Namespace) -> None:
    if not OPA.exists():
        raise SystemExit(f"OPA is missing at {OPA}; run `make setup` first")
    if not EXT_AUTHZ_OPA.exists():
        raise SystemExit(f"{EXT_AUTHZ_OPA} is missing; run scripts/build-opa-ext-authz.sh "
                         "(make bench runs it)")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="aiswa-bench-mesh-") as folder:
        bed = Bed(Path(folder))
        try:
            await bed.start()
            denial = await check_denials(bed)
            samples, failures = await measure(bed, args.rate, args.calls, args.rounds)
        finally:
            bed.stop()
    result = _summary(samples, failures, args.rate, denial)
    # Other load on the machine shows first in the p99 figures.
    result["load_average_before"] = load_before
    result["load_average_after"] = os.getloadavg()
    out = ROOT / ".state" / "bench" / "mesh.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(result))
    print(f"figures written to {out}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        plain, authz, opa_url = sys.argv[2:5]
        asyncio.run(_serve(int(plain), int(authz), opa_url))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second (200)")
    parser.add_argument("--calls", type=int, default=500, help="calls per path per round (500)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (6)")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
