"""One operating-system user per workload, when the launcher runs as root.

A network namespace separates network stacks, not privileges: a workload
that runs as root in its pod can still read every key in the state folder,
enter the other pods and stop any process. So each workload's app runs as the
user ``aiswa-<workload>``, and its sidecar, OPA and certificate agent as
``aiswa-<workload>-proxy``, as Linkerd runs its proxy with a user id of its
own, so that the app cannot read the mesh key. They run with no capabilities
and ``no_new_privs`` set (``setpriv``, after ``ip netns exec``, which needs
root). The proxy user owns only the certificate folder and its home under the
state folder (the admin socket), and the app user only its own home (keys)
and data. Everything else that they read is readable by every local user.
The launcher's secrets are not.

OpenBao, RabbitMQ (and its epmd), the trace collector and the edge Envoy run
the same way, as ``aiswa-openbao``, ``aiswa-rabbitmq``, ``aiswa-collector``
and ``aiswa-edge``, each owning its data folder (the edge: its TLS key and
access log).

When it does not run as root itself, the launcher runs everything as its own
user. It does the same, with a warning, when other users cannot enter the
checkout or the state folder (a checkout under /root, for example), because
the workloads could then not read their own code.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from ._state import ROOT, StateLayout, is_root

USER_PREFIX = "aiswa-"

# The shared servers that run as users of their own, and their supervisord programs.
SERVER_PROGRAMS = {"openbao": ["openbao"], "rabbitmq": ["epmd", "rabbitmq"],
                   "collector": ["collector"], "edge": ["gateway"]}


def workload_user(workload: str) -> str:
    """Return the name of ``workload``'s operating-system user."""
    return USER_PREFIX + workload


def proxy(workload: str) -> str:
    """Return the account of ``workload``'s mesh layer: its sidecar, OPA and identity agent."""
    return f"{workload}-proxy"


def user_programs(workloads: list[str]) -> dict[str, list[str]]:
    """Return the supervisord programs that run as each user: workloads, then servers."""
    programs = {proxy("gateway"): ["identity-gateway", "sidecar-gateway"]}
    for workload in workloads:
        programs[workload] = [workload]
        programs[proxy(workload)] = [f"identity-{workload}", f"sidecar-{workload}",
                                     f"opa-{workload}"]
    return {**programs, **SERVER_PROGRAMS}


def workload_home(layout: StateLayout, workload: str) -> Path:
    """Return the folder that only ``workload`` may use: its sockets and its keys."""
    return layout.root / "workloads" / workload


def process_identity(pid: int) -> tuple[set[int], int, bool]:
    """Return a process's user ids, effective capabilities and no_new_privs flag.

    The user ids are the real, effective, saved and file system ones, read from /proc.
    """
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return ({int(uid) for uid in fields["Uid"].split()}, int(fields["CapEff"], 16),
            fields.get("NoNewPrivs", "0").strip() == "1")


def closed_folder(path: Path) -> Path | None:
    """Return the outermost folder on the way to ``path`` that a user with no rights of its
    own cannot enter, or None when it can reach ``path``."""
    for folder in [*reversed(path.parents), path]:
        try:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return folder
        except FileNotFoundError:
            # A folder the launcher creates later gets mode 0755.
            continue
    return None


class WorkloadUsers:
    """Create the workload users, give them their files and run their commands."""

    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        self.reason = self._reason_disabled()

    user_pattern = USER_PREFIX + "<workload>"

    @property
    def enabled(self) -> bool:
        return self.reason is None

    def _reason_disabled(self) -> str | None:
        if not is_root():
            return "the launcher does not run as root"
        missing = [tool for tool in ("setpriv", "useradd") if shutil.which(tool) is None]
        if missing:
            return f"{' and '.join(missing)} not found (Debian package util-linux, passwd)"
        for folder in (ROOT, self.layout.root):
            closed = closed_folder(folder)
            if closed is not None:
                return (f"other users cannot enter {closed} (on the way to {folder}), so the "
                        f"workloads could not read their code; allow it with `chmod o+x "
                        f"{closed}`, or move the checkout (or AISWA_STATE_DIR) out of it")
        return _interpreter_problem(self.layout.venv_python)

    def home(self, workload: str) -> Path:
        return workload_home(self.layout, workload)

    def ensure(self, owned: dict[str, list[Path]], *, homes: bool = True) -> None:
        """Create each workload's user and home and give it the paths of ``owned``.

        ``owned`` maps a workload, or a shared server, to the files and
        folders it owns; a folder is given with everything in it. Without
        ``homes``, no home is created. Without users, only the homes are.
        """
        for workload, paths in owned.items():
            home = self.home(workload)
            if homes:
                home.mkdir(parents=True, exist_ok=True)
                os.chmod(home, 0o700)
            if not self.enabled:
                continue
            user = workload_user(workload)
            if subprocess.run(["id", "-u", user], capture_output=True, check=False).returncode:
                subprocess.run(
                    ["useradd", "--system", "--user-group", "--no-create-home",
                     "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                     "--comment", f"AI-SWA workload {workload}", user],
                    check=True, capture_output=True, text=True,
                )
            entry = pwd.getpwnam(user)
            for path in [home, *paths] if homes else paths:
                _chown_tree(path, entry.pw_uid, entry.pw_gid)

    def command(self, workload: str, command: list[str]) -> list[str]:
        """Return ``command`` run as ``workload``'s user, or unchanged without users."""
        if not self.enabled:
            return command
        user = workload_user(workload)
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *command]


@functools.cache
def _interpreter_problem(python: Path) -> str | None:
    """Return why a user with no rights of its own cannot start the venv's Python, if so.

    The venv links to the interpreter it was made from, which may sit in a
    folder that other users cannot enter, such as pyenv's under /root. The
    probe starts a process, so it runs once per interpreter and process.

    NOTE: on the machine this was written on, another user can start
    pyenv's Python under /root (mode 0700) all the same. Its loader cannot
    read pyenv's libpython there, so it takes Debian's libpython3.11 and
    standard library (3.11.2, not pyenv's 3.11.7). Importing grpc checks
    that the venv still works with them.
    """
    if not python.exists():
        # Rendering into a folder without a venv starts nothing.
        return None
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(python),
         "-c", "import grpc"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    error = lines[-1] if lines else "no output"
    return (f"another user cannot start {python} ({error}), whose interpreter is "
            f"{os.path.realpath(python)}; make the venv from a Python that every user "
            "can run (PYTHON=... make setup)")


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` to ``uid``, with everything in it when it is a folder; skip a missing path."""
    if not os.path.lexists(path):
        return
    os.chown(path, uid, gid, follow_symlinks=False)
    if path.is_dir() and not path.is_symlink():
        for parent, folders, files in os.walk(path):
            for name in [*folders, *files]:
                os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)
