"""The running platform's pods: each workload's app, sidecar and OPA in a network namespace.

`make up` as root creates them (aiswa_mesh._network); without pods every test
here is skipped, and `aiswa check` warns instead. Connections go only to
loopback, to the bridge and to the pods' addresses.
"""

from __future__ import annotations

import grp
import json
import pwd
import os
import socket
import stat
import subprocess

import httpx
import pytest

from aiswa_mesh._mesh import Mesh
from aiswa_mesh._users import workload_home
from aiswa_mesh.probe import connect
from conftest import supervisorctl


@pytest.fixture(scope="module")
def mesh(layout, topology) -> Mesh:
    mesh = Mesh(layout, topology)
    if not mesh.network.enabled:
        pytest.skip("the platform runs without pods (not root, or AISWA_PODS=off)")
    return mesh


def _pid(layout, program: str) -> int:
    text = supervisorctl(layout, "pid", program).strip()
    assert text.isdigit(), f"{program} is not running: {text!r}"
    assert int(text) > 0, f"{program} is not running: {text!r}"
    return int(text)


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def test_each_workload_runs_in_its_own_pod(layout, mesh):
    host = _netns_inode("/proc/self/ns/net")
    pods = {}
    for workload in ["gateway", *mesh.workloads]:
        pod = _netns_inode(f"/run/netns/{mesh.network.pods.netns(workload)}")
        programs = [f"sidecar-{workload}"]
        if workload != "gateway":
            programs += [workload, f"opa-{workload}"]
        for program in programs:
            found = _netns_inode(f"/proc/{_pid(layout, program)}/ns/net")
            assert found == pod, f"{program} runs in namespace {found}, not its pod's {pod}"
        pods[workload] = pod
    assert host not in pods.values()
    assert len(set(pods.values())) == len(pods), pods
    # The edge proxy is the platform's ingress and stays on the host.
    assert _netns_inode(f"/proc/{_pid(layout, 'gateway')}/ns/net") == host


@pytest.mark.parametrize("workload", ["users", "projects", "reflector", "vision", "dashboard"])
def test_app_port_answers_only_inside_its_pod(mesh, workload):
    network = mesh.network
    port = mesh.ports(workload).app
    inside = network.probe(workload, "connect", f"127.0.0.1:{port}", timeout=0)
    assert inside.stdout.strip() == "open", inside.stderr
    address = network.address(workload)
    assert connect("127.0.0.1", port) == "ConnectionRefusedError"
    assert connect(address, port) == "ConnectionRefusedError"
    other = "vision" if workload != "vision" else "users"
    from_other = network.probe(other, "connect", f"{address}:{port}", timeout=0)
    assert from_other.stdout.strip() == "ConnectionRefusedError", from_other
    # The sidecar's inbound listener is the way in, on the pod's address.
    assert connect(*mesh.inbound_address(workload)) == "open"


def test_pods_reach_shared_servers_on_the_bridge_only(mesh, topology):
    network = mesh.network
    infra = topology["infrastructure"]
    shared = {
        "PostgreSQL": infra["postgres"]["port"],
        "RabbitMQ": infra["rabbitmq"]["amqp_port"],
        "OpenBao": topology["mesh"]["openbao_port"],
        "collector": infra["collector"]["port"],
    }
    for name, port in shared.items():
        on_bridge = network.probe("users", "connect", f"{network.host_address}:{port}", timeout=0)
        assert on_bridge.stdout.strip() == "open", f"{name} on the bridge: {on_bridge}"
        # A pod's own loopback is not the host's.
        on_loopback = network.probe("users", "connect", f"127.0.0.1:{port}", timeout=0)
        assert on_loopback.stdout.strip() == "ConnectionRefusedError", name
    # RabbitMQ's management API is for OpenBao on the host only.
    management = infra["rabbitmq"]["management_port"]
    reply = network.probe("users", "connect", f"{network.host_address}:{management}", timeout=0)
    assert reply.stdout.strip() == "ConnectionRefusedError"
    assert connect("127.0.0.1", management) == "open"


def test_pods_have_no_route_off_the_bridge(mesh):
    network = mesh.network.pods
    for workload in ["gateway", *mesh.workloads]:
        routes = json.loads(subprocess.run(
            ["ip", "-n", network.netns(workload), "-4", "-j", "route", "show"],
            capture_output=True, text=True, check=True).stdout)
        assert [route["dst"] for route in routes] == [str(network.network)], routes


def test_host_facing_sockets_are_private(layout, mesh, topology):
    edge_admin = workload_home(layout, "edge") / "admin.sock"
    sockets = [mesh.admin_address(workload) for workload in ["gateway", *mesh.workloads]]
    for path in [*sockets, edge_admin]:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode), path
        assert stat.S_IMODE(mode) == 0o600, f"{path} has mode {stat.S_IMODE(mode):o}"
    # The edge proxy reaches the gateway's sidecar through sockets that only the
    # sidecar's user and the edge's group may use.
    for upstream in mesh.upstreams("gateway"):
        path = mesh.gateway_outbound(upstream)
        assert path.parent == mesh.edge_sockets
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode), path
        assert stat.S_IMODE(info.st_mode) == 0o660, f"{path} has mode {stat.S_IMODE(info.st_mode):o}"
    folder = os.stat(mesh.edge_sockets)
    if mesh.users.enabled:
        assert stat.S_IMODE(folder.st_mode) == 0o2750
        assert pwd.getpwuid(folder.st_uid).pw_name == "aiswa-gateway-proxy"
        assert grp.getgrgid(folder.st_gid).gr_name == "aiswa-edge"
        assert grp.getgrgid(info.st_gid).gr_name == "aiswa-edge"
    else:
        assert stat.S_IMODE(folder.st_mode) == 0o700
    # The admin interface listens on no TCP port, in the pod or outside.
    admin_port = mesh.ports("projects").admin
    inside = mesh.network.probe("projects", "connect", f"127.0.0.1:{admin_port}", timeout=0)
    assert inside.stdout.strip() == "ConnectionRefusedError"
    with mesh.admin_client("projects") as admin:
        assert admin.get("/ready").text.strip() == "LIVE"
    # Nor does the edge Envoy's, on the host.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", topology["gateway"]["admin_port"]), timeout=2)
    edge = httpx.HTTPTransport(uds=str(edge_admin))
    with httpx.Client(transport=edge, base_url="http://admin", timeout=5) as admin:
        assert admin.get("/ready").text.strip() == "LIVE"


def test_host_servers_listen_on_loopback_or_bridge(mesh, topology):
    infra = topology["infrastructure"]
    rabbit = infra["rabbitmq"]
    ports = {infra["postgres"]["port"], rabbit["amqp_port"], rabbit["dist_port"],
             rabbit["epmd_port"], rabbit["management_port"], infra["collector"]["port"],
             topology["mesh"]["openbao_port"], topology["mesh"]["openbao_port"] + 1,
             topology["gateway"]["https_port"]}
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True,
                               check=True).stdout.splitlines()
    allowed = {"127.0.0.1", "[::1]", mesh.network.host_address}
    seen = {}
    for line in listening:
        host, _, port = line.split()[3].rpartition(":")
        # gRPC binds an IPv4 address as an IPv4-mapped IPv6 socket.
        host = host.removeprefix("[::ffff:").removesuffix("]") if "::ffff:" in host else host
        if int(port) in ports:
            seen.setdefault(int(port), set()).add(host)
    # Every shared server was found, so the check below covers each of them.
    assert set(seen) == ports, sorted(ports - set(seen))
    exposed = {port: hosts - allowed for port, hosts in seen.items() if hosts - allowed}
    assert exposed == {}, f"listening beyond loopback and the bridge: {exposed}"


def test_pods_reach_no_other_host_port(mesh):
    network = mesh.network
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                            check=True).stdout
    assert f"table inet {network.filter_table}" in tables
    # A host service outside the shared servers, on the bridge's address.
    with socket.create_server((network.host_address, 0)) as listener:
        port = listener.getsockname()[1]
        assert connect(network.host_address, port) == "open"
        from_pod = network.probe("vision", "connect", f"{network.host_address}:{port}",
                                 timeout=0)
    assert from_pod.stdout.strip() == "ConnectionRefusedError", from_pod


def _status(pid: int) -> dict[str, str]:
    lines = open(f"/proc/{pid}/status").read().splitlines()
    return {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}


@pytest.fixture(scope="module")
def users(mesh):
    if not mesh.users.enabled:
        pytest.skip(f"the workloads run as the launcher's user: {mesh.users.reason}")
    return mesh.users


def test_workloads_and_servers_run_as_own_users(layout, mesh, users):
    seen = {}
    # The app runs as the workload's user, its sidecar, OPA and identity agent as
    # the proxy's; the gateway has no app.
    accounts = {"gateway-proxy": ["identity-gateway", "sidecar-gateway"]}
    for workload in mesh.workloads:
        accounts[workload] = [workload]
        accounts[f"{workload}-proxy"] = [f"identity-{workload}", f"sidecar-{workload}",
                                         f"opa-{workload}"]
    for account, programs in accounts.items():
        entry = pwd.getpwnam(f"aiswa-{account}")
        uid, gid = entry.pw_uid, entry.pw_gid
        assert uid != 0
        assert gid != 0
        for program in programs:
            status = _status(_pid(layout, program))
            # Real, effective, saved and file system user and group ids.
            assert status["Uid"].split() == [str(uid)] * 4, (program, status["Uid"])
            assert status["Gid"].split() == [str(gid)] * 4, (program, status["Gid"])
            # No supplementary groups, such as root's.
            assert status["Groups"] == "", (program, status["Groups"])
            assert int(status["CapEff"], 16) == 0, program
            assert int(status["CapBnd"], 16) == 0, program
            assert status["NoNewPrivs"] == "1", program
        seen[account] = uid
    servers = {"openbao": ["openbao"], "rabbitmq": ["epmd", "rabbitmq"], "collector": ["collector"],
               "edge": ["gateway"]}
    for server, programs in servers.items():
        uid = pwd.getpwnam(f"aiswa-{server}").pw_uid
        for program in programs:
            status = _status(_pid(layout, program))
            assert status["Uid"].split() == [str(uid)] * 4, (program, status["Uid"])
            assert int(status["CapEff"], 16) == 0, program
        seen[server] = uid
    seen["postgres"] = pwd.getpwnam("postgres").pw_uid
    assert _status(_pid(layout, "postgres"))["Uid"].split()[0] == str(seen["postgres"])
    assert 0 not in seen.values()
    assert len(set(seen.values())) == len(seen), seen


def _as_user(workload: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", f"aiswa-{workload}", "--", *command],
                          capture_output=True, text=True, check=False)


def test_workload_user_reads_only_own_keys(layout, mesh, users):
    own = _as_user("users-proxy", "cat", str(mesh.certs_dir("users") / "key.pem"))
    assert own.returncode == 0, own.stderr
    assert own.stdout.startswith("-----BEGIN"), own.stdout[:40]
    # The app itself cannot read its mesh key, nor the proxy its signing key.
    app = _as_user("users", "cat", str(mesh.certs_dir("users") / "key.pem"))
    assert "Permission denied" in app.stderr, app.stderr
    key = _as_user("users-proxy", "cat", str(users.home("users") / "signing-key.pem"))
    assert "Permission denied" in key.stderr, key.stderr
    signing = _as_user("users", "cat", str(users.home("users") / "signing-key.pem"))
    assert signing.returncode == 0, signing.stderr
    assert "PRIVATE KEY" in signing.stdout
    # Another workload's mesh key and signing key, the launcher's secrets
    # and OpenBao's private folder are out of reach.
    for path in (mesh.certs_dir("projects") / "key.pem", users.home("users") / "signing-key.pem",
                 layout.secrets / "openbao-root-token", layout.root / "openbao" / "tls"):
        denied = _as_user("vision", "cat", str(path))
        assert denied.returncode != 0, path
        assert "Permission denied" in denied.stderr, (path, denied.stderr)
    # Nor the shared servers' data, the traces of every workload or the uploaded archives.
    for path in (layout.root / "openbao" / "data", layout.rabbitmq / ".erlang.cookie",
                 layout.traces / "spans.jsonl", layout.archives):
        denied = _as_user("vision", "cat", str(path))
        assert "Permission denied" in denied.stderr, (path, denied.stderr)
    # Nor the logs: another program's output and decision log, a sidecar's access
    # log, or the list of logs.
    for path in (layout.logs / "projects.log", layout.logs / "opa-projects.log",
                 mesh.sidecar_logs("projects")[1], layout.logs):
        denied = _as_user("vision", "ls" if path == layout.logs else "cat", str(path))
        assert "Permission denied" in denied.stderr, (path, denied.stderr)
    # OpenBao's CA certificate is public: every workload verifies OpenBao with it.
    ca = _as_user("vision", "cat", str(mesh.openbao.ca_cert))
    assert ca.returncode == 0, ca.stderr
    assert ca.stdout.startswith("-----BEGIN CERTIFICATE")
    # A workload cannot stop another's process.
    sidecar = _pid(layout, "sidecar-projects")
    for user in ("vision", "projects"):
        kill = _as_user(user, "kill", "-0", str(sidecar))
        assert "Operation not permitted" in kill.stderr, (user, kill.stderr)
    assert _as_user("projects-proxy", "kill", "-0", str(sidecar)).returncode == 0
    # Only the edge proxy may call the gateway's sidecar through its sockets.
    connect = ("import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1]); "
               "print('open')")
    sidecar_socket = str(mesh.gateway_outbound("projects"))
    for user, expected in (("vision", "PermissionError"), ("gateway-proxy", "open"),
                           ("edge", "open")):
        reply = _as_user(user, "python3", "-c", connect, sidecar_socket)
        found = "open" if reply.stdout.strip() == "open" else reply.stderr.strip().splitlines()[-1]
        assert found.startswith(expected), (user, found)
    # Nor open another's file descriptors, such as the pipe of its OpenBao login.
    fds = _as_user("vision", "ls", f"/proc/{_pid(layout, 'projects')}/fd")
    assert fds.returncode != 0
    assert "Permission denied" in fds.stderr, fds.stderr
    own = _as_user("vision", "ls", f"/proc/{_pid(layout, 'vision')}/fd")
    assert own.returncode == 0, own.stderr
    assert "0" in own.stdout.split()
