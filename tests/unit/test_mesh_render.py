"""`aiswa mesh render` output checked against mesh/topology.yaml by aiswa_mesh.render.verify.

The artifacts are rendered into a temporary state folder; nothing is started.
Each tampering test changes one rendered file, or the topology, the way a
hand edit or a stale render would, and expects verify to name that difference.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from aiswa_mesh._state import ROOT, StateLayout
from aiswa_mesh.envoy_sidecar import identity_dns, identity_uri
from aiswa_mesh.launcher import Platform
from aiswa_mesh.render import verify
from aiswa_runtime import load_topology

TOPOLOGY = load_topology(str(ROOT / "mesh" / "topology.yaml"))
INTRUDER = identity_uri("intruder", "aiswa")
USERS = identity_uri("users", "aiswa")
PROJECTS = identity_uri("projects", "aiswa")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> StateLayout:
    layout = StateLayout(tmp_path_factory.mktemp("state"))
    # The gateway's transcoder reads the descriptor set that `make setup` builds.
    (layout.root / "gen").mkdir()
    shutil.copy(ROOT / ".state" / "gen" / "aiswa.pb", layout.root / "gen" / "aiswa.pb")
    written = Platform(layout).render()
    names = {path.name for path in written}
    assert {"gateway.yaml", "supervisord.conf", "sidecar-gateway.yaml"} <= names
    assert {f"sidecar-{name}.yaml" for name in TOPOLOGY["workloads"]} <= names
    return layout


@pytest.fixture
def layout(rendered, tmp_path) -> StateLayout:
    """A copy of the rendered state folder that a test may change."""
    copied = tmp_path / "state"
    shutil.copytree(rendered.root, copied, symlinks=True)
    return StateLayout(copied)


def _edit_yaml(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def _listener(config: dict, name: str) -> dict:
    return next(item for item in config["static_resources"]["listeners"] if item["name"] == name)


def _cluster(config: dict, name: str) -> dict:
    return next(item for item in config["static_resources"]["clusters"] if item["name"] == name)


def test_fresh_render_agrees_with_topology(rendered):
    assert verify(rendered, TOPOLOGY) == []


def test_rbac_that_admits_an_unlisted_identity_is_reported(layout):
    def admit_intruder(config: dict) -> None:
        rbac = _listener(config, "inbound")["filter_chains"][0]["filters"][0]
        rbac["typed_config"]["rules"]["policies"]["client-intruder"] = {
            "permissions": [{"any": True}],
            "principals": [{"authenticated": {"principal_name": {"exact": INTRUDER}}}],
        }

    _edit_yaml(layout.envoy / "sidecar-projects.yaml", admit_intruder)
    problems = verify(layout, TOPOLOGY)
    assert len(problems) == 1
    assert "sidecar-projects.yaml: inbound RBAC admits" in problems[0]
    assert INTRUDER in problems[0]


def test_topology_change_without_render_is_reported(rendered):
    topology = copy.deepcopy(TOPOLOGY)
    topology["workloads"]["vision"]["clients"].append("reflector")
    problems = verify(rendered, topology)
    assert len(problems) == 1
    assert problems[0].startswith("sidecar-vision.yaml: inbound RBAC admits")


def test_outbound_cluster_accepting_another_identity_is_reported(layout):
    def accept_users(config: dict) -> None:
        context = _cluster(config, "outbound_projects")["transport_socket"]["typed_config"]
        validation = context["common_tls_context"]["combined_validation_context"]
        validation["default_validation_context"]["match_typed_subject_alt_names"][0]["matcher"][
            "exact"] = USERS

    _edit_yaml(layout.envoy / "sidecar-reflector.yaml", accept_users)
    problems = verify(layout, TOPOLOGY)
    assert problems == [
        f"sidecar-reflector.yaml: the cluster for projects accepts [{USERS!r}] "
        f"(SNI {identity_dns('projects', 'aiswa')}), not only {PROJECTS}"
    ]


def test_gateway_route_around_its_sidecar_is_reported(layout):
    users_app = TOPOLOGY["workloads"]["users"]["port"]

    def bypass(config: dict) -> None:
        endpoint = _cluster(config, "users")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        endpoint["endpoint"]["address"]["socket_address"]["port_value"] = users_app

    _edit_yaml(layout.envoy / "gateway.yaml", bypass)
    problems = verify(layout, TOPOLOGY)
    assert len(problems) == 1
    assert f"the gateway reaches users at ('127.0.0.1', {users_app})" in problems[0]


def test_missing_program_is_reported(layout):
    conf = layout.supervisord_conf
    text = conf.read_text()
    start = text.index("[program:opa-vision]")
    end = text.find("\n[", start + 1)
    conf.write_text(text[:start] + (text[end + 1:] if end != -1 else ""))
    problems = verify(layout, TOPOLOGY)
    assert problems == ["supervisord.conf: no program for ['opa-vision']"]


def test_missing_sidecar_config_is_reported(layout):
    (layout.envoy / "sidecar-users.yaml").unlink()
    problems = verify(layout, TOPOLOGY)
    assert len(problems) == 1
    assert "sidecar-users.yaml: cannot read it" in problems[0]
    assert "aiswa mesh render" in problems[0]
