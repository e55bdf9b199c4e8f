"""Pod networks (aiswa_mesh.pods) with real namespaces, links and processes.

These tests need root and no running platform. Each test creates its own
bridge, namespaces and addresses under a random name prefix, in a free
10.99.x.0/24 range, and removes them. Traffic goes only to loopback and to
addresses inside that range. `ip route get` resolves a route without sending
a packet.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiswa_mesh.localca import free_port
from aiswa_mesh.pods import (
    MAX_INTERFACE_NAME,
    PodNetwork,
    PodsConfigError,
    PodsError,
    PodsUnavailable,
)

IP = shutil.which("ip") or "/usr/sbin/ip"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root; run these tests as root"
)

SERVER = """
import socket, sys
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, port))
server.listen()
print("listening", flush=True)
while True:
    connection, _ = server.accept()
    connection.sendall(token.encode())
    connection.close()
"""

CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as connection:
        print("received " + connection.recv(100).decode())
except OSError as exc:
    print("error " + type(exc).__name__)
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], capture_output=True, text=True, check=check, timeout=10)


def namespaces() -> set[str]:
    return {entry["name"] for entry in json.loads(ip("-j", "netns", "list").stdout or "[]")}


def links() -> set[str]:
    return {entry["ifname"] for entry in json.loads(ip("-j", "link", "show").stdout)}


def host_ipv4_addresses() -> set[str]:
    addresses = set()
    for link in json.loads(ip("-4", "-j", "address", "show").stdout):
        addresses |= {info["local"] for info in link.get("addr_info", [])}
    return addresses


def free_range() -> str:
    """Return a 10.99.x.0/24 range that no host route overlaps."""
    routes = json.loads(ip("-4", "-j", "route", "show", "table", "all").stdout)
    used = []
    for route in routes:
        try:
            used.append(ipaddress.ip_network(route.get("dst", ""), strict=False))
        except ValueError:
            continue
    candidates = list(range(1, 255))
    random.shuffle(candidates)
    for third in candidates:
        network = ipaddress.ip_network(f"10.99.{third}.0/24")
        if not any(network.overlaps(other) for other in used):
            return str(network)
    raise AssertionError("no free 10.99.x.0/24 range on this host")


class Sandbox:
    """Names, range and cleanup of one test's pod networks."""

    def __init__(self, state_dir: Path) -> None:
        self.tag = f"at{secrets.token_hex(3)}"
        self.bridge = f"{self.tag}br"
        self.cidr = free_range()
        self.state_dir = state_dir
        self.networks: list[PodNetwork] = []
        self.processes: list[subprocess.Popen[str]] = []

    def network(self, pods: list[str], **overrides: str) -> PodNetwork:
        settings = {"bridge": self.bridge, "cidr": self.cidr, "prefix": self.tag, **overrides}
        network = PodNetwork(self.state_dir, pods, **settings)
        self.networks.append(network)
        return network

    def serve(self, prefix: list[str], host: str, port: int) -> str:
        """Start a server that sends a random token on each connection; return the token."""
        token = secrets.token_hex(4)
        process = subprocess.Popen(
            [*prefix, sys.executable, "-c", SERVER, host, str(port), token],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.processes.append(process)
        line = process.stdout.readline().strip()
        assert line == "listening", f"server on {host}:{port} did not start: {line!r}"
        return token

    def cleanup(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait(timeout=10)
        for network in self.networks:
            network.down()
        # Anything left under this test's random tag is this test's own.
        for name in namespaces():
            if name.startswith(self.tag):
                ip("netns", "delete", name, check=False)
        for name in links():
            if name.startswith(self.tag):
                ip("link", "delete", "dev", name, check=False)


@pytest.fixture
def sandbox(tmp_path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path / "state")
    yield box
    box.cleanup()


@pytest.fixture
def pods(sandbox) -> PodNetwork:
    network = sandbox.network(["a", "b"])
    try:
        network.create()
    except PodsUnavailable as exc:
        pytest.skip(str(exc))
    return network


def reach(prefix: list[str], host: str, port: int) -> str:
    """Connect to host:port from wherever ``prefix`` runs the client; return its one line."""
    result = subprocess.run([*prefix, sys.executable, "-c", CLIENT, host, str(port)],
                            capture_output=True, text=True, timeout=20, check=True)
    return result.stdout.strip()


# The exec prefix of a process on the host: none.
HOST: list[str] = []


@needs_root
def test_pod_loopback_server_stays_inside(sandbox, pods):
    port = free_port()
    token = sandbox.serve(pods.exec_prefix("a"), "127.0.0.1", port)

    assert reach(pods.exec_prefix("a"), "127.0.0.1", port) == f"received {token}"
    assert reach(HOST, pods.address("a"), port) == "error ConnectionRefusedError"
    assert reach(HOST, "127.0.0.1", port) == "error ConnectionRefusedError"
    assert reach(pods.exec_prefix("b"), pods.address("a"), port) == "error ConnectionRefusedError"
    assert reach(pods.exec_prefix("b"), "127.0.0.1", port) == "error ConnectionRefusedError"


@needs_root
def test_pod_address_server_reachable(sandbox, pods):
    port = free_port()
    token = sandbox.serve(pods.exec_prefix("a"), pods.address("a"), port)

    assert reach(pods.exec_prefix("b"), pods.address("a"), port) == f"received {token}"
    assert reach(HOST, pods.address("a"), port) == f"received {token}"
    assert reach(pods.exec_prefix("a"), pods.address("a"), port) == f"received {token}"


@needs_root
def test_host_bridge_server_reachable(sandbox, pods):
    port = free_port()
    token = sandbox.serve(HOST, pods.host_address, port)

    assert reach(pods.exec_prefix("a"), pods.host_address, port) == f"received {token}"
    assert reach(pods.exec_prefix("b"), pods.host_address, port) == f"received {token}"


@needs_root
def test_host_loopback_server_hidden_from_pods(sandbox, pods):
    port = free_port()
    token = sandbox.serve(HOST, "127.0.0.1", port)

    assert reach(HOST, "127.0.0.1", port) == f"received {token}"
    assert reach(pods.exec_prefix("a"), pods.host_address, port) == "error ConnectionRefusedError"
    assert reach(pods.exec_prefix("a"), "127.0.0.1", port) == "error ConnectionRefusedError"


@needs_root
def test_exec_prefix_keeps_process_id(sandbox, pods):
    # A supervisor signals the pid it started: `ip netns exec` must not fork.
    process = subprocess.Popen([*pods.exec_prefix("a"), sys.executable, "-c",
                                "import os; print(os.getpid())"],
                               stdout=subprocess.PIPE, text=True)
    output, _ = process.communicate(timeout=10)

    assert int(output) == process.pid


@needs_root
def test_pod_has_no_route_off_machine(pods):
    namespace = pods.netns("a")
    lookup = ip("netns", "exec", namespace, "ip", "route", "get", "8.8.8.8", check=False)
    routes = json.loads(ip("-n", namespace, "-4", "-j", "route", "show").stdout)

    assert lookup.returncode != 0
    assert "Network is unreachable" in lookup.stderr
    assert [route["dst"] for route in routes] == [str(pods.network)]
    assert routes[0]["dev"] == "eth0"


@needs_root
def test_pod_interfaces_and_addresses(pods):
    namespace = pods.netns("b")
    pod_links = {entry["ifname"]: entry
                 for entry in json.loads(ip("-n", namespace, "-j", "address", "show").stdout)}
    ipv4 = [(info["local"], info["prefixlen"]) for info in pod_links["eth0"]["addr_info"]
            if info["family"] == "inet"]
    ipv6 = [info for info in pod_links["eth0"]["addr_info"] if info["family"] == "inet6"]
    bridge = json.loads(ip("-j", "address", "show", "dev", pods.bridge).stdout)[0]
    veth = json.loads(ip("-j", "link", "show", "dev", namespace).stdout)[0]

    assert set(pod_links) == {"lo", "eth0"}
    assert "UP" in pod_links["lo"]["flags"]
    assert "UP" in pod_links["eth0"]["flags"]
    assert ipv4 == [(pods.address("b"), 24)]
    assert ipv6 == []
    assert pods.host_address == str(pods.network.network_address + 1)
    assert pods.address("a") == str(pods.network.network_address + 2)
    assert pods.address("b") == str(pods.network.network_address + 3)
    assert [(info["local"], info["prefixlen"]) for info in bridge["addr_info"]] == [
        (pods.host_address, 24)]
    assert veth["master"] == pods.bridge
    assert pods.exec_prefix("b")[-3:] == ["netns", "exec", namespace]


@needs_root
def test_create_is_idempotent(sandbox, pods):
    again = sandbox.network(["a", "b"])
    again.create()
    pods.create()
    eth0 = json.loads(ip("-n", pods.netns("a"), "-4", "-j", "address", "show", "dev", "eth0").stdout)

    assert [info["local"] for info in eth0[0]["addr_info"]] == [pods.address("a")]
    assert {pods.netns("a"), pods.netns("b")} <= namespaces()


@needs_root
def test_create_rejects_changed_pod_order(sandbox, pods):
    reordered = sandbox.network(["b", "a"])

    with pytest.raises(PodsError, match="make down"):
        reordered.create()


@needs_root
def test_down_removes_only_its_own(sandbox, pods):
    # Look-alike names under the same prefix that this network did not create.
    unrelated_namespace = f"{sandbox.tag}-c"
    unrelated_link = f"{sandbox.tag}-d"
    ip("netns", "add", unrelated_namespace)
    ip("link", "add", "name", unrelated_link, "type", "bridge")
    created_namespaces = {pods.netns("a"), pods.netns("b")}
    created_links = {pods.bridge, pods.netns("a"), pods.netns("b")}
    assert created_namespaces <= namespaces()
    assert created_links <= links()

    pods.down()

    assert not created_namespaces & namespaces()
    assert not created_links & links()
    assert pods.host_address not in host_ipv4_addresses()
    assert not pods.state_file.exists()
    assert unrelated_namespace in namespaces()
    assert unrelated_link in links()

    before = (namespaces(), links())
    pods.down()
    assert (namespaces(), links()) == before

    ip("netns", "delete", unrelated_namespace)
    ip("link", "delete", "dev", unrelated_link)


@needs_root
def test_down_after_partial_create(sandbox):
    network = sandbox.network(["a", "b", "c"])
    foreign = network.netns("b")
    ip("netns", "add", foreign)

    with pytest.raises(PodsError, match=f"{foreign} already exists"):
        network.create()
    recorded = json.loads(network.state_file.read_text())
    assert list(recorded["pods"]) == ["a"]
    assert network.netns("a") in namespaces()

    network.down()

    assert network.netns("a") not in namespaces()
    assert not {network.bridge, network.netns("a")} & links()
    assert foreign in namespaces()
    ip("netns", "delete", foreign)


@needs_root
def test_create_rejects_foreign_bridge(sandbox):
    network = sandbox.network(["a"])
    ip("link", "add", "name", network.bridge, "type", "bridge")

    with pytest.raises(PodsError, match=f"{network.bridge} already exists"):
        network.create()
    network.down()

    assert network.bridge in links()
    assert network.netns("a") not in namespaces()


@needs_root
@pytest.mark.parametrize("state", ["up", "down"])
def test_create_rejects_range_in_use(sandbox, state):
    # A bridge of our own has an address in the range that the network
    # requests. Down, it still has the address's local route.
    other = f"{sandbox.tag}-x"
    address = str(ipaddress.ip_network(sandbox.cidr).network_address + 200)
    ip("link", "add", "name", other, "type", "bridge")
    ip("address", "add", f"{address}/24", "dev", other)
    ip("link", "set", "dev", other, state)
    network = sandbox.network(["a"])

    with pytest.raises(PodsError, match=f"overlaps the host route .* on {other}"):
        network.create()

    assert not network.state_file.exists()
    assert network.bridge not in links()
    ip("link", "delete", "dev", other)


def test_unprivileged_create_explains_fallback(tmp_path, monkeypatch):
    # As root, the module is made to see another uid: a real privilege drop
    # (setpriv to nobody) cannot run the project's Python when the checkout
    # lies under a private folder, as a fresh CI clone may.
    monkeypatch.setattr("aiswa_mesh.pods.os.geteuid", lambda: 65534)
    network = PodNetwork(tmp_path, ["a"], cidr="10.99.0.0/24", prefix="at", bridge="atbr")
    with pytest.raises(PodsUnavailable) as error:
        network.create()
    message = str(error.value)

    assert "need root" in message
    assert "share the loopback interface" in message
    assert "any local process can reach the app ports" in message
    assert not (tmp_path / "pods-atbr.json").exists()


@pytest.mark.parametrize(("cidr", "pods", "message"), [
    ("banana", ["a"], "invalid pod range 'banana': expected an IPv4 network"),
    ("10.99.0.0", ["a"], "the prefix length is missing"),
    ("10.99.0.1/24", ["a"], "host bits are set; use the network address, 10.99.0.0/24"),
    ("fd00::/64", ["a"], "is IPv6"),
    ("8.8.8.0/24", ["a"], "'8.8.8.0/24' is not private"),
    ("10.99.0.0/30", ["a", "b"], "has 2 usable addresses, and the bridge and 2 pods need 3"),
    ("10.99.0.0/31", ["a"], "too small"),
])
def test_invalid_range_rejected(tmp_path, cidr, pods, message):
    with pytest.raises(PodsConfigError, match=message) as error:
        PodNetwork(tmp_path, pods, cidr=cidr, bridge="atbr", prefix="at")

    assert repr(cidr) in str(error.value)
    assert "10.77.0.0/24" in str(error.value) or "use the network address" in str(error.value)


def test_long_names_rejected(tmp_path):
    with pytest.raises(PodsConfigError, match=f"at most {MAX_INTERFACE_NAME}") as pod_error:
        PodNetwork(tmp_path, ["reflector"], prefix="aiswatest1", bridge="atbr")
    with pytest.raises(PodsConfigError, match=f"at most {MAX_INTERFACE_NAME}") as bridge_error:
        PodNetwork(tmp_path, ["a"], prefix="at", bridge="aiswatestbridge0")

    assert "'aiswatest1-reflector' has 20 characters" in str(pod_error.value)
    assert "bridge name 'aiswatestbridge0' has 16 characters" in str(bridge_error.value)


@pytest.mark.parametrize(("pods", "options", "message"), [
    (["Users"], {}, "invalid pod name 'Users'"),
    (["a", "a"], {}, "must be unique"),
    (["a"], {"prefix": "at_1"}, "invalid pod name prefix 'at_1'"),
    (["br"], {"prefix": "at", "bridge": "at-br"}, "also a pod's interface name"),
])
def test_invalid_names_rejected(tmp_path, pods, options, message):
    settings = {"prefix": "at", "bridge": "atbr", **options}

    with pytest.raises(PodsConfigError, match=message):
        PodNetwork(tmp_path, pods, **settings)


def test_unknown_pod_rejected(tmp_path):
    network = PodNetwork(tmp_path, ["a"], prefix="at", bridge="atbr", cidr="10.99.0.0/24")

    with pytest.raises(PodsConfigError, match="unknown pod 'b'"):
        network.address("b")
