"""aiswa_mesh._network without privileges: the loopback fallback and its addresses."""

from __future__ import annotations

import copy

import pytest

from aiswa_mesh._network import Network
from aiswa_mesh._state import ROOT, StateLayout
from aiswa_mesh.launcher import Platform
from aiswa_mesh.pods import PodRangeInUse, PodsError
from aiswa_runtime import load_topology

TOPOLOGY = load_topology(str(ROOT / "mesh" / "topology.yaml"))


@pytest.fixture
def layout(tmp_path) -> StateLayout:
    layout = StateLayout(tmp_path / "state")
    layout.create()
    return layout


def test_unprivileged_start_falls_back(layout, monkeypatch):
    monkeypatch.setattr("aiswa_mesh.pods.os.geteuid", lambda: 1000)
    network = Network(layout, TOPOLOGY)
    reason = network.start()
    assert reason is not None
    assert "need root and this process runs as uid 1000" in reason
    assert "any local process can reach the app ports directly" in reason
    assert network.enabled is False
    assert network.address("users") == "127.0.0.1"
    assert network.host_addresses == ["127.0.0.1"]
    assert network.command("users", ["true"]) == ["true"]


def test_pods_off_falls_back(layout, monkeypatch):
    monkeypatch.setenv("AISWA_PODS", "off")
    reason = Network(layout, TOPOLOGY).start()
    assert reason is not None
    assert reason.startswith("AISWA_PODS=off: workloads will share the loopback interface")


def test_pod_addresses_follow_topology(layout):
    # The state file is the sign that start() created the pods.
    (layout.run / "pods-aiswa0.json").write_text("{}\n")
    network = Network(layout, TOPOLOGY)
    assert network.enabled is True
    assert network.host_address == "10.77.0.1"
    assert network.host_addresses == ["127.0.0.1", "10.77.0.1"]
    assert [network.address(name) for name in ("gateway", "users", "dashboard")] == [
        "10.77.0.2", "10.77.0.3", "10.77.0.7"]
    assert network.command("users", ["true"])[-4:] == ["netns", "exec", "aiswa-users", "true"]


def test_pod_range_override(layout, monkeypatch):
    monkeypatch.setenv("AISWA_POD_CIDR", "10.88.0.0/24")
    (layout.run / "pods-aiswa0.json").write_text("{}\n")
    assert Network(layout, TOPOLOGY).address("users") == "10.88.0.3"


def test_invalid_pod_range_names_variable(layout, monkeypatch):
    monkeypatch.setenv("AISWA_POD_CIDR", "8.8.8.0/24")
    with pytest.raises(SystemExit) as error:
        Platform(layout)
    message = str(error.value)
    assert "pod range '8.8.8.0/24' is not private" in message
    assert "AISWA_POD_CIDR" in message


def test_short_range_rejected_for_topology(layout):
    topology = copy.deepcopy(TOPOLOGY)
    topology["mesh"]["pods"]["cidr"] = "10.77.0.0/29"
    # Six pods and the bridge need seven addresses; a /29 has six.
    with pytest.raises(ValueError, match="has 6 usable addresses, and the bridge and 6 pods"):
        Network(layout, topology)


def test_missing_nft_warns(layout, monkeypatch):
    monkeypatch.setattr("aiswa_mesh._network.shutil.which", lambda name: None)
    network = Network(layout, TOPOLOGY)
    network._filter_host_ports()
    assert len(network.warnings) == 1
    assert "nft (Debian package nftables) was not found" in network.warnings[0]
    assert "run `make setup`" in network.warnings[0]
    assert network.shared_ports == [54317, 55432, 55672, 58200]


@pytest.mark.parametrize("error, advice", [
    (PodRangeInUse("pod range 10.77.0.0/24 overlaps the host route 10.77.0.0/16 on eth1"),
     "Set AISWA_POD_CIDR to another private range"),
    (PodsError("nft failed to load the table aiswa_aiswa0: Operation not supported"),
     "Fix that and run `make up` again"),
])
def test_pod_failure_advice_fits_cause(layout, monkeypatch, error, advice):
    def fail() -> None:
        raise error

    removed = []
    network = Network(layout, TOPOLOGY)
    monkeypatch.setattr(network.pods, "create", fail)
    monkeypatch.setattr(network, "stop", lambda: removed.append(True))
    with pytest.raises(SystemExit) as failure:
        network.start()
    message = str(failure.value)
    assert message.startswith(f"launcher: cannot create the pods: {error}. {advice}")
    assert message.endswith("AISWA_PODS=off to run without pods")
    # Whatever start() created before the failure is removed.
    assert removed == [True]
