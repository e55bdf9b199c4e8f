"""Per-workload network namespaces ("pods") on a private bridge, built with iproute2.

A PodNetwork creates, when run as root:

- a Linux bridge holding the first host address of the range (``host_address``),
  where the host's shared servers (PostgreSQL, RabbitMQ, OpenBao, the trace
  collector) listen for the pods;
- per pod, in the order given: a named network namespace with ``lo`` up, and
  a veth pair. The host end of the pair is attached to the bridge. The other
  end is ``eth0`` inside the namespace and has the pod's address.

A pod has one route, to the bridge's range, and no default route. The module
adds no NAT and no forwarding rule, and it turns IPv4 forwarding off on the
bridge, so a pod can reach only the host's bridge address and the other pods.
A server bound to 127.0.0.1 inside a pod is reachable only from that pod.

Every name that the network creates is recorded in a JSON state file before
the object is created, so that ``down()`` removes exactly those objects, even
after a failed or interrupted ``create()``, and nothing else. A name that
already exists and is not recorded is never adopted: ``create()`` raises
instead. Host-side links also carry an alias naming their owner (visible in
``ip link``), and ``down()`` leaves a recorded link alone when another owner's
alias is set on it.

Network namespaces separate network stacks, not privileges. A process that
runs as root inside a pod can still enter any other namespace, so workloads
that must not do so need an unprivileged user as well.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# IFNAMSIZ is 16 bytes including the terminating NUL byte (linux/if.h).
MAX_INTERFACE_NAME = 15
# The interface name of a pod's end of its veth pair, inside the pod.
POD_INTERFACE = "eth0"
# The ranges of RFC 1918. Pod addresses must stay off any routed network.
PRIVATE_RANGES = tuple(ipaddress.ip_network(block)
                       for block in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_SYSFS_NET = Path("/sys/class/net")
_STATE_VERSION = 1

LOOPBACK_FALLBACK = ("workloads will share the loopback interface, so any local process "
                     "can reach the app ports directly")


class PodsError(RuntimeError):
    """An iproute2 command failed, or the state file disagrees with the requested network."""


class PodRangeInUse(PodsError):
    """A pod range that overlaps a route of the host."""


class PodsUnavailable(PodsError):
    """This process cannot create network namespaces (not root, or not permitted here)."""


class PodsConfigError(ValueError):
    """An invalid pod range, pod name, prefix or bridge name."""


def ip_binary() -> str:
    """Return the path of iproute2's ``ip``, or raise PodsUnavailable when it is missing."""
    path = shutil.which("ip") or next(
        (candidate for candidate in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip")
         if os.access(candidate, os.X_OK)), None)
    if path is None:
        raise PodsUnavailable(
            "iproute2's `ip` command was not found; install it with `make setup` "
            f"(Debian package iproute2). Until then {LOOPBACK_FALLBACK}"
        )
    return path


def check_available() -> str:
    """Raise PodsUnavailable unless this process is root and has ``ip``; return its path."""
    if os.geteuid() != 0:
        raise PodsUnavailable(
            f"network namespaces need root and this process runs as uid {os.geteuid()}; "
            f"{LOOPBACK_FALLBACK}"
        )
    return ip_binary()


class PodNetwork:
    """A bridge and one network namespace per pod, with addresses from ``cidr``.

    ``pods`` fixes the addresses: the bridge has the first host address of the
    range and the pod at index ``i`` the address ``i + 2`` after the network
    address. Names are ``<prefix>-<pod>`` for both the namespace and the host
    end of the veth pair. The state file is ``<state_dir>/pods-<bridge>.json``.

    The constructor validates names and the range and needs no privileges.
    ``create()`` and ``down()`` need root.
    """

    def __init__(self, state_dir: Path | str, pods: Sequence[str], *,
                 bridge: str = "aiswa0", cidr: str = "10.77.0.0/24",
                 prefix: str = "aiswa") -> None:
        self.state_dir = Path(state_dir)
        self.bridge = _interface_name(bridge, "bridge name")
        _check_name(prefix, "pod name prefix")
        self.prefix = prefix
        self.pods = list(pods)
        if len(set(self.pods)) != len(self.pods):
            raise PodsConfigError(f"pod names must be unique; got {self.pods}")
        for pod in self.pods:
            _check_name(pod, "pod name")
            _interface_name(self.netns(pod), f"interface name for pod {pod!r}")
        if self.bridge in {self.netns(pod) for pod in self.pods}:
            raise PodsConfigError(
                f"bridge name {self.bridge!r} is also a pod's interface name; choose another"
            )
        self.network = _parse_range(cidr, len(self.pods))

    @property
    def state_file(self) -> Path:
        return self.state_dir / f"pods-{self.bridge}.json"

    @property
    def host_address(self) -> str:
        """The bridge's address: where servers shared with the pods listen."""
        return str(self.network.network_address + 1)

    @property
    def prefix_length(self) -> int:
        return self.network.prefixlen

    def address(self, pod: str) -> str:
        """Return the IPv4 address of ``pod``'s ``eth0``."""
        return str(self.network.network_address + 2 + self._index(pod))

    def netns(self, pod: str) -> str:
        """Return the name of ``pod``'s network namespace, also the host end of its veth pair."""
        return f"{self.prefix}-{pod}"

    def exec_prefix(self, pod: str) -> list[str]:
        """Return the argv prefix that runs a command inside ``pod``.

        ``ip netns exec`` enters the namespace and then executes the command in
        the same process, so a supervisor's signals reach the command itself.
        It needs root, so a supervisor that should run the command as another
        user puts ``setpriv --reuid=USER --regid=GROUP --init-groups --`` after
        this prefix instead of switching users first. setpriv also executes
        in place, whereas runuser forks.
        """
        self._index(pod)
        return [ip_binary(), "netns", "exec", self.netns(pod)]

    def create(self) -> None:
        """Create the bridge and every pod; idempotent.

        Raises PodsUnavailable when namespaces cannot be created here, and
        the caller then falls back to loopback. Raises PodsError when an object
        that this network did not create has one of its names, when the range
        overlaps a host route, or when the state file records another layout.
        After any error, ``down()`` removes what was created.
        """
        ip = check_available()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            state = self._load_state()
            if state is None:
                state = {"version": _STATE_VERSION, "owner": secrets.token_hex(6),
                         "bridge": self.bridge, "cidr": str(self.network),
                         "host_address": self.host_address, "bridge_created": False,
                         "pods": {}}
            self._check_state(state)
            self._check_range_free(ip)
            self._ensure_bridge(ip, state)
            for pod in self.pods:
                self._ensure_pod(ip, state, pod)

    def down(self) -> None:
        """Remove every namespace, veth pair and bridge recorded in the state file.

        Idempotent, and safe after a partial ``create()``. Objects that this
        network did not record are left alone, so is a recorded link that
        carries another owner's alias. Without a state file it does nothing.
        """
        if not self.state_file.exists():
            return
        ip = check_available()
        with self._locked():
            state = self._load_state()
            if state is None:
                return
            alias = _owner_alias(state)
            for pod in reversed(list(state["pods"])):
                name = state["pods"][pod]["netns"]
                # Deleting the host end destroys the pair, even when a process
                # still keeps the namespace alive.
                self._delete_link(ip, name, alias)
                if name in _namespaces(ip):
                    leftover = _run(ip, "netns", "pids", name, check=False).stdout.split()
                    if leftover:
                        log.warning("processes %s still run in pod %s; its namespace lives on "
                                    "without a network until they exit", ", ".join(leftover), pod)
                    _run(ip, "netns", "delete", name)
                del state["pods"][pod]
                self._save_state(state)
            if state["bridge_created"]:
                self._delete_link(ip, state["bridge"], alias)
            self.state_file.unlink()

    def _index(self, pod: str) -> int:
        try:
            return self.pods.index(pod)
        except ValueError:
            raise PodsConfigError(f"unknown pod {pod!r}; this network has {self.pods}") from None

    def _check_state(self, state: dict) -> None:
        """Raise PodsError when the state file records another bridge, range or pod address."""
        recorded = (state["bridge"], state["cidr"])
        if recorded != (self.bridge, str(self.network)):
            raise PodsError(
                f"{self.state_file} records bridge {recorded[0]} with range {recorded[1]}, not "
                f"{self.bridge} with {self.network}; remove the old network first (`make down`)"
            )
        for pod, entry in state["pods"].items():
            expected = self.address(pod) if pod in self.pods else None
            if entry["address"] != expected or entry["netns"] != self.netns(pod):
                raise PodsError(
                    f"{self.state_file} records pod {pod} as {entry['netns']} at "
                    f"{entry['address']}, but the pod list now gives "
                    f"{expected or 'no address'}; remove the old network first (`make down`)"
                )

    def _check_range_free(self, ip: str) -> None:
        """Raise PodRangeInUse when any host route off this bridge overlaps the range.

        Every address has a route in the local table, even on a link that is
        down, so checking the routes of all tables also checks the addresses.
        """
        routes = json.loads(_run(ip, "-4", "-j", "route", "show", "table", "all").stdout or "[]")
        for route in routes:
            destination = route.get("dst", "")
            if destination == "default" or route.get("dev") == self.bridge:
                continue
            try:
                network = ipaddress.ip_network(destination, strict=False)
            except ValueError:
                continue
            if network.overlaps(self.network):
                raise PodRangeInUse(
                    f"pod range {self.network} overlaps the host route {destination} on "
                    f"{route.get('dev', 'no device')}; choose a range that the host does not use"
                )

    def _ensure_bridge(self, ip: str, state: dict) -> None:
        alias = _owner_alias(state)
        if not state["bridge_created"]:
            _claim_link(self.bridge, alias)
            state["bridge_created"] = True
            self._save_state(state)
        if not _link_exists(self.bridge):
            _run_privileged(ip, "link", "add", "name", self.bridge, "type", "bridge")
        _run(ip, "link", "set", "dev", self.bridge, "alias", alias)
        _run(ip, "address", "replace", f"{self.host_address}/{self.prefix_length}",
             "dev", self.bridge)
        # Packets that pods send to any address outside the range must go
        # nowhere, even on a host where IPv4 forwarding is on.
        # NOTE: writing net.ipv4.ip_forward later sets this per-interface
        # value on every interface, ours included, until create() runs again.
        _write_sysctl(f"ipv4/conf/{self.bridge}/forwarding", "0")
        _write_sysctl(f"ipv6/conf/{self.bridge}/disable_ipv6", "1")
        _run(ip, "link", "set", "dev", self.bridge, "up")

    def _ensure_pod(self, ip: str, state: dict, pod: str) -> None:
        name = self.netns(pod)
        alias = _owner_alias(state)
        if pod not in state["pods"]:
            if name in _namespaces(ip):
                raise PodsError(f"network namespace {name} already exists and was not created "
                                f"by this network; remove it or choose another prefix")
            _claim_link(name, alias)
            state["pods"][pod] = {"netns": name, "address": self.address(pod)}
            self._save_state(state)
        if name not in _namespaces(ip):
            _run_privileged(ip, "netns", "add", name)
        if not _link_exists(name):
            _run_privileged(ip, "link", "add", "name", name, "type", "veth",
                            "peer", "name", POD_INTERFACE, "netns", name)
        _run(ip, "link", "set", "dev", name, "alias", alias)
        _write_sysctl(f"ipv6/conf/{name}/disable_ipv6", "1")
        _run(ip, "link", "set", "dev", name, "master", self.bridge, "up")
        # IPv6 would give eth0 a link-local address outside the pod range.
        _run(ip, "netns", "exec", name, "sh", "-c",
             f"if [ -e /proc/sys/net/ipv6/conf/{POD_INTERFACE} ]; then "
             f"echo 1 > /proc/sys/net/ipv6/conf/{POD_INTERFACE}/disable_ipv6; fi")
        _run(ip, "-n", name, "address", "replace",
             f"{self.address(pod)}/{self.prefix_length}", "dev", POD_INTERFACE)
        _run(ip, "-n", name, "link", "set", "dev", POD_INTERFACE, "up")
        _run(ip, "-n", name, "link", "set", "dev", "lo", "up")

    def _delete_link(self, ip: str, name: str, alias: str) -> None:
        if not _link_exists(name):
            return
        current = _link_alias(name)
        # An empty alias means that create() stopped between adding the link
        # and naming its owner: the name was free before it was recorded.
        if current not in ("", alias):
            log.warning("link %s carries the alias %r of another owner; left in place",
                        name, current)
            return
        _run(ip, "link", "delete", "dev", name)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.state_dir / f"pods-{self.bridge}.lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load_state(self) -> dict | None:
        if not self.state_file.exists():
            return None
        try:
            state = json.loads(self.state_file.read_text())
        except json.JSONDecodeError as exc:
            raise PodsError(f"{self.state_file} is not valid JSON ({exc}); remove the objects "
                            "it names with `ip` and then the file") from exc
        if state.get("version") != _STATE_VERSION:
            raise PodsError(f"{self.state_file} has state version {state.get('version')!r}, "
                            f"expected {_STATE_VERSION}")
        return state

    def _save_state(self, state: dict) -> None:
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(temporary, self.state_file)


def _check_name(value: str, kind: str) -> None:
    if not _NAME.fullmatch(value):
        raise PodsConfigError(
            f"invalid {kind} {value!r}: use lowercase letters, digits and inner hyphens"
        )


def _interface_name(value: str, kind: str) -> str:
    _check_name(value, kind)
    if len(value) > MAX_INTERFACE_NAME:
        raise PodsConfigError(
            f"{kind} {value!r} has {len(value)} characters; Linux interface names have at "
            f"most {MAX_INTERFACE_NAME}: choose a shorter prefix or name"
        )
    return value


def _parse_range(cidr: str, pod_count: int) -> ipaddress.IPv4Network:
    """Return ``cidr`` as a private IPv4 network with room for the bridge and ``pod_count`` pods."""
    example = "such as 10.77.0.0/24"
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise PodsConfigError(f"invalid pod range {cidr!r}: expected an IPv4 network in "
                              f"CIDR notation, {example}") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise PodsConfigError(f"pod range {cidr!r} is IPv6; pods use an IPv4 range {example}")
    if "/" not in cidr:
        raise PodsConfigError(f"invalid pod range {cidr!r}: the prefix length is missing; "
                              f"write it in CIDR notation, {example}")
    if network.network_address != ipaddress.ip_interface(cidr.strip()).ip:
        raise PodsConfigError(f"invalid pod range {cidr!r}: host bits are set; use the "
                              f"network address, {network}")
    if not any(network.subnet_of(block) for block in PRIVATE_RANGES):
        raise PodsConfigError(
            f"pod range {cidr!r} is not private; choose one inside "
            f"{', '.join(map(str, PRIVATE_RANGES))} that the host does not use, {example}"
        )
    # The network and broadcast addresses are not usable; one more goes to the bridge.
    usable = max(network.num_addresses - 2, 0)
    needed = 1 + max(pod_count, 1)
    if usable < needed:
        raise PodsConfigError(
            f"pod range {cidr!r} is too small: it has {usable} usable addresses, and the bridge "
            f"and {pod_count} pods need {needed}; choose a larger range, {example}"
        )
    return network


def _owner_alias(state: dict) -> str:
    return f"aiswa-pods {state['owner']}"


def _claim_link(name: str, alias: str) -> None:
    """Raise PodsError when a link named ``name`` exists without this network's alias."""
    if _link_exists(name) and _link_alias(name) != alias:
        raise PodsError(f"network interface {name} already exists and was not created by "
                        f"this network; remove it or choose another name or prefix")


def _link_exists(name: str) -> bool:
    return (_SYSFS_NET / name).exists()


def _link_alias(name: str) -> str:
    try:
        return (_SYSFS_NET / name / "ifalias").read_text().strip()
    except FileNotFoundError:
        return ""


def _namespaces(ip: str) -> set[str]:
    listing = _run(ip, "-j", "netns", "list").stdout.strip()
    return {entry["name"] for entry in json.loads(listing or "[]")}


def _write_sysctl(key: str, value: str) -> None:
    """Set a per-interface sysctl of the host's namespace; skip it when the kernel lacks it."""
    path = Path("/proc/sys/net") / key
    if path.exists():
        path.write_text(value + "\n")


def _run(ip: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([ip, *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise PodsError(f"`ip {' '.join(args)}` failed with exit code {result.returncode}: "
                        f"{(result.stderr or result.stdout).strip()}")
    return result


def _run_privileged(ip: str, *args: str) -> None:
    """Run an ``ip`` command that creates an object; raise PodsUnavailable when not permitted."""
    result = _run(ip, *args, check=False)
    if result.returncode == 0:
        return
    message = (result.stderr or result.stdout).strip()
    if "Operation not permitted" in message:
        raise PodsUnavailable(f"`ip {' '.join(args)}` is not permitted here ({message}); "
                              f"{LOOPBACK_FALLBACK}")
    raise PodsError(f"`ip {' '.join(args)}` failed with exit code {result.returncode}: {message}")
