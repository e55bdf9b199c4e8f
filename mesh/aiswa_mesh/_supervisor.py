from __future__ import annotations

import configparser
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.xmlrpc import Faults, SupervisorTransport

from ._state import StateLayout


@dataclass
class Program:
    name: str
    command: list[str]
    priority: int
    environment: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    directory: Path | None = None
    stop_signal: str = "TERM"
    stop_wait_seconds: int = 20


def _quote(value: str) -> str:
    escaped = value.replace("%", "%%").replace('"', '\\"')
    return f'"{escaped}"'


def render_config(layout: StateLayout, programs: list[Program]) -> str:
    lines = [
        "; Rendered by `make up` (aiswa_mesh.launcher) from mesh/topology.yaml;",
        "; edits are overwritten.",
        "[unix_http_server]",
        f"file={layout.supervisor_socket}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={layout.logs / 'supervisord.log'}",
        f"pidfile={layout.run / 'supervisord.pid'}",
        f"directory={layout.root.parent}",
        "logfile_maxbytes=10MB",
        # supervisord writes every program's output, decision logs included, into
        # files that other local users must not read. Each program keeps 022.
        "umask=027",
        "nodaemon=false",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{layout.supervisor_socket}",
        "",
    ]
    for program in programs:
        lines += [
            f"[program:{program.name}]",
            "command=" + " ".join(program.command),
            f"priority={program.priority}",
            # The launcher starts programs one by one, each after the previous
            # one passed its health check.
            "autostart=false",
            "autorestart=true",
            "startsecs=2",
            "startretries=5",
            f"stopsignal={program.stop_signal}",
            f"stopwaitsecs={program.stop_wait_seconds}",
            "stopasgroup=true",
            "killasgroup=true",
            "umask=022",
            "redirect_stderr=true",
            f"stdout_logfile={layout.logs / (program.name + '.log')}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=3",
        ]
        if program.user:
            lines.append(f"user={program.user}")
        if program.directory:
            lines.append(f"directory={program.directory}")
        if program.environment:
            lines.append(
                "environment=" + ",".join(f"{k}={_quote(v)}" for k, v in program.environment.items())
            )
        lines.append("")
    return "\n".join(lines)


class Supervisor:
    """Control of the platform's own supervisord, through its socket in the state folder."""

    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        bin_dir = Path(sys.executable).parent
        self._supervisord = str(bin_dir / "supervisord")
        self._supervisorctl = str(bin_dir / "supervisorctl")

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self._supervisorctl, "-c", str(self.layout.supervisord_conf), *args],
            capture_output=True, text=True, check=check,
        )

    def running(self) -> bool:
        if not self.layout.supervisor_socket.exists():
            return False
        # supervisorctl exits 4 when it cannot reach supervisord.
        return self.ctl("pid").returncode == 0

    def start_daemon(self) -> None:
        if self.running():
            self.ctl("reread")
            self.ctl("update")
            return
        # The umask is set here as well as in the configuration, because supervisord
        # opens its own log before it applies the configuration's umask=.
        subprocess.run([self._supervisord, "-c", str(self.layout.supervisord_conf)], check=True,
                       umask=0o027)
        deadline = time.monotonic() + 15
        while not self.running():
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"supervisord did not start; see {self.layout.logs / 'supervisord.log'}"
                )
            time.sleep(0.2)

    def state(self, name: str) -> str:
        result = self.ctl("status", name)
        parts = result.stdout.split()
        return parts[1] if len(parts) > 1 else "UNKNOWN"

    def start(self, name: str, *, wait: bool = True) -> None:
        """Start program ``name`` unless it runs already.

        With ``wait``, return once supervisord counts it as running, that is,
        alive for ``startsecs``. Without, return as soon as it is spawned, for
        callers that check its readiness themselves.
        """
        try:
            with self._rpc() as rpc:
                if rpc.supervisor.getProcessInfo(name)["statename"] == "RUNNING":
                    return
                rpc.supervisor.startProcess(name, wait)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == Faults.ALREADY_STARTED:
                return
            raise SystemExit(
                f"supervisord could not start {name}: {fault.faultString}; see "
                f"{self.layout.logs / (name + '.log')}"
            ) from None

    def _rpc(self) -> xmlrpc.client.ServerProxy:
        """Open supervisord's XML-RPC interface on its UNIX socket.

        One call costs milliseconds, where each supervisorctl run starts a
        Python interpreter.
        """
        transport = SupervisorTransport(None, None, f"unix://{self.layout.supervisor_socket}")
        # The host name is not used: the transport connects to the socket.
        return xmlrpc.client.ServerProxy("http://supervisord", transport=transport)

    def stop(self, name: str) -> None:
        self.ctl("stop", name)

    def shutdown(self, timeout: float = 90.0) -> None:
        pid_file = self.layout.run / "supervisord.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        # `stop all` would signal every program at once, and the services
        # could then no longer revoke their OpenBao tokens and leases. Each
        # `stop` returns once its programs have exited.
        for names in self._stop_order():
            self.ctl("stop", *names)
        self.ctl("stop", "all")
        self.ctl("shutdown")
        deadline = time.monotonic() + timeout
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _stop_order(self) -> list[list[str]]:
        """Return the programs grouped by priority, the last started first."""
        conf = configparser.RawConfigParser()
        try:
            conf.read(self.layout.supervisord_conf)
        except configparser.Error:
            return []
        groups: dict[int, list[str]] = {}
        for section in conf.sections():
            if section.startswith("program:"):
                priority = conf.getint(section, "priority", fallback=999)
                groups.setdefault(priority, []).append(section.removeprefix("program:"))
        return [groups[priority] for priority in sorted(groups, reverse=True)]

    def status_text(self) -> str:
        return self.ctl("status").stdout


def _alive(pid: int) -> bool:
    try:
        import os

        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
