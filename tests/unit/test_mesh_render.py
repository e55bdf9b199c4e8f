"""`aiswa mesh render` output checked against mesh/topology.yaml by aiswa_mesh.render.verify.

The artifacts are rendered into a temporary state folder; nothing is started.
Each tampering test changes one rendered file, or the topology, the way a
hand edit or a stale render would, and expects verify to name that difference.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from aiswa_mesh._state import ROOT, StateLayout, is_root
from aiswa_mesh._supervisor import Supervisor
from aiswa_mesh.envoy_sidecar import APP_CLUSTER, identity_dns, identity_uri
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


# --- pods ---------------------------------------------------------------------------


def _render_pods(root: Path) -> StateLayout:
    """Render a state folder as `make up` renders it as root, with one pod per workload.

    Rendering needs no privileges: the launcher takes the pods' state file as
    the sign that they exist, so the test writes one instead of creating them.
    """
    layout = StateLayout(root)
    (layout.root / "gen").mkdir(parents=True)
    shutil.copy(ROOT / ".state" / "gen" / "aiswa.pb", layout.root / "gen" / "aiswa.pb")
    layout.create()
    (layout.run / "pods-aiswa0.json").write_text("{}\n")
    Platform(layout).render()
    return layout


@pytest.fixture(scope="module")
def rendered_pods(tmp_path_factory) -> StateLayout:
    return _render_pods(tmp_path_factory.mktemp("state-pods"))


def _program_command(layout: StateLayout, program: str) -> str:
    text = layout.supervisord_conf.read_text()
    section = text[text.index(f"[program:{program}]"):]
    return next(line for line in section.splitlines() if line.startswith("command="))


def test_pods_render_agrees_with_topology(rendered_pods):
    assert verify(rendered_pods, TOPOLOGY) == []


def test_pods_put_listeners_on_pod_addresses_and_sockets(rendered_pods):
    layout = rendered_pods
    projects = yaml.safe_load((layout.envoy / "sidecar-projects.yaml").read_text())
    # gateway is the first pod (10.77.0.2), then the workloads in topology order.
    assert _listener(projects, "inbound")["address"] == {
        "socket_address": {"address": "10.77.0.4", "port_value": 50152}}
    assert projects["admin"]["address"] == {
        "pipe": {"path": str(layout.root / "workloads" / "projects-proxy" / "admin.sock"),
                 "mode": 0o600}}
    assert _cluster(projects, APP_CLUSTER)["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 50052}}
    reflector = yaml.safe_load((layout.envoy / "sidecar-reflector.yaml").read_text())
    to_projects = _cluster(reflector, "outbound_projects")["load_assignment"]["endpoints"][0]
    assert to_projects["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "10.77.0.4", "port_value": 50152}}
    # The edge proxy stays on the host and reaches the gateway's sidecar by UNIX sockets.
    gateway = yaml.safe_load((layout.envoy / "gateway.yaml").read_text())
    sidecar = yaml.safe_load((layout.envoy / "sidecar-gateway.yaml").read_text())
    for upstream in ("users", "projects", "reflector", "vision", "dashboard"):
        path = str(layout.run / "edge" / f"to-{upstream}.sock")
        # The edge proxy connects through its group (Mesh.edge_sockets).
        assert _listener(sidecar, f"outbound_{upstream}")["address"] == {
            "pipe": {"path": path, "mode": 0o660}}
        assert _cluster(gateway, upstream)["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
            "endpoint"]["address"]["pipe"]["path"] == path


def test_pods_run_each_workload_in_its_namespace(rendered_pods):
    layout = rendered_pods
    for workload in TOPOLOGY["workloads"]:
        for program in (workload, f"sidecar-{workload}", f"opa-{workload}"):
            assert f" netns exec aiswa-{workload} " in _program_command(layout, program), program
        # The identity agent stays on the host, where it reaches OpenBao on loopback.
        assert "netns" not in _program_command(layout, f"identity-{workload}")
    users = _program_command(layout, "users")
    # deliver runs first, on the host, and then executes the app inside the pod.
    assert users.index("aiswa_mesh.deliver") < users.index("netns exec aiswa-users")
    assert "AISWA_DATABASE_URL=\"postgresql://10.77.0.1:55432/aiswa_users\"" in \
        layout.supervisord_conf.read_text()
    assert "listen_addresses=127.0.0.1,10.77.0.1" in _program_command(layout, "postgres")
    assert "--address 127.0.0.1:54317 --address 10.77.0.1:54317" in \
        _program_command(layout, "collector")
    openbao = yaml.safe_load((layout.root / "openbao" / "config.json").read_text())
    assert [listener["tcp"]["address"] for listener in openbao["listener"]] == [
        "127.0.0.1:58200", "10.77.0.1:58200"]


@pytest.fixture
def open_state(monkeypatch):
    """A state folder that other users can enter, as the workload users must.

    The checkout may sit in a folder that other users cannot enter (a clone
    in `mktemp -d`), which would turn the users off, so the open folder
    stands in for it too.
    """
    if not is_root():
        pytest.skip("workload users need root")
    folder = Path(tempfile.mkdtemp(prefix="aiswa-render-", dir="/var/tmp"))
    folder.chmod(0o755)
    monkeypatch.setattr("aiswa_mesh._users.ROOT", folder)
    yield folder / "state"
    shutil.rmtree(folder)


def test_pods_run_each_workload_as_its_user(open_state):
    layout = _render_pods(open_state)
    for workload in ["gateway", *TOPOLOGY["workloads"]]:
        programs = {f"sidecar-{workload}": f"{workload}-proxy",
                    f"identity-{workload}": f"{workload}-proxy"}
        if workload != "gateway":
            programs |= {workload: workload, f"opa-{workload}": f"{workload}-proxy"}
        for program, user in programs.items():
            as_user = (f"setpriv --reuid=aiswa-{user} --regid=aiswa-{user} --clear-groups "
                       "--inh-caps=-all --bounding-set=-all --no-new-privs -- ")
            command = _program_command(layout, program)
            assert as_user in command, program
            # setpriv comes last: `ip netns exec` needs root, and so does deliver,
            # which reads the orchestrator token.
            for earlier in ("aiswa_mesh.deliver", "netns exec"):
                if earlier in command:
                    assert command.index(earlier) < command.index("setpriv"), program
    for server, programs in {"openbao": ["openbao"], "rabbitmq": ["epmd", "rabbitmq"],
                             "collector": ["collector"], "edge": ["gateway"]}.items():
        for program in programs:
            assert f"setpriv --reuid=aiswa-{server} --regid=aiswa-{server} " in \
                _program_command(layout, program), program
    # PostgreSQL runs as postgres (supervisord's user option).
    assert "setpriv" not in _program_command(layout, "postgres")
    assert "user=postgres" in layout.supervisord_conf.read_text()
    assert verify(layout, TOPOLOGY) == []
    conf = layout.supervisord_conf
    conf.write_text(conf.read_text().replace(
        "setpriv --reuid=aiswa-vision --regid=aiswa-vision --clear-groups --inh-caps=-all "
        "--bounding-set=-all --no-new-privs -- /", "/", 1))
    problems = verify(layout, TOPOLOGY)
    assert len(problems) == 1, problems
    assert "does not run as the user of vision" in problems[0]


def test_loopback_render_has_no_pods(rendered):
    projects = yaml.safe_load((rendered.envoy / "sidecar-projects.yaml").read_text())
    assert _listener(projects, "inbound")["address"]["socket_address"]["address"] == "127.0.0.1"
    assert projects["admin"]["address"] == {
        "socket_address": {"address": "127.0.0.1", "port_value": 50252}}
    assert "netns" not in rendered.supervisord_conf.read_text()


def test_pods_program_outside_its_pod_is_reported(tmp_path):
    layout = _render_pods(tmp_path / "state")
    conf = layout.supervisord_conf
    text = conf.read_text()
    conf.write_text(text.replace(f"{shutil.which('ip') or '/usr/sbin/ip'} netns exec aiswa-vision "
                                 "/", "/", 1))
    problems = verify(layout, TOPOLOGY)
    assert len(problems) == 1
    assert "does not run in the pod of vision" in problems[0]


def test_stop_order_reverses_start(rendered):
    order = [name for group in Supervisor(rendered)._stop_order() for name in group]
    assert order[0] == "gateway"
    assert order[-1] == "postgres"
    # Services stop while OpenBao still runs, so that they can revoke their tokens.
    for service in ("users", "projects", "reflector", "vision", "dashboard"):
        assert order.index(service) < order.index("openbao")
        assert order.index(service) < order.index(f"opa-{service}")
    assert order.index("openbao") < order.index("rabbitmq")
