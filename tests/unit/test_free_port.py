"""free_port, which the tests and benchmarks use to pick their listeners' ports."""

from __future__ import annotations

import socket

import pytest

from aiswa_mesh import localca


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def small_range(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """A range of four free ports, and a fresh record of handed-out ports."""
    low = localca.FREE_PORT_RANGE[0]
    while not all(_port_is_free(port) for port in range(low, low + 4)):
        low += 4
    monkeypatch.setattr(localca, "FREE_PORT_RANGE", (low, low + 3))
    monkeypatch.setattr(localca, "_HANDED_OUT", set())
    return low, low + 3


def test_free_port_never_repeats(small_range: tuple[int, int]) -> None:
    # Nothing binds the ports in between, as when a test picks all its ports first.
    low, high = small_range
    ports = []
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", low))
        while True:
            try:
                ports.append(localca.free_port())
            except RuntimeError as error:
                assert f"between {low} and {high}" in str(error)
                break
    # The held port is skipped, and each of the other three comes out once.
    assert sorted(ports) == [low + 1, low + 2, low + 3]


def test_free_port_below_ephemeral_range() -> None:
    ephemeral_low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = {localca.free_port() for _ in range(50)}
    assert len(ports) == 50
    assert all(localca.FREE_PORT_RANGE[0] <= port <= localca.FREE_PORT_RANGE[1] for port in ports)
    assert max(ports) < ephemeral_low
