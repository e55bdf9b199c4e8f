from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class StateLayout:
    """Every path that the local platform writes, all under one folder."""

    root: Path

    @property
    def venv_python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def rabbitmq(self) -> Path:
        return self.root / "rabbitmq"

    @property
    def envoy(self) -> Path:
        return self.root / "envoy"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def traces(self) -> Path:
        return self.root / "traces"

    @property
    def archives(self) -> Path:
        return self.root / "archives"

    @property
    def supervisord_conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def supervisor_socket(self) -> Path:
        return self.run / "supervisor.sock"

    @property
    def admin_key(self) -> Path:
        return self.secrets / "admin-api-key"

    def create(self) -> None:
        for folder in (self.root, self.logs, self.run, self.rabbitmq, self.envoy):
            folder.mkdir(parents=True, exist_ok=True)
        # The traces and the uploaded archives are for their one owner (the
        # collector, the projects service) and root.
        for private in (self.secrets, self.traces, self.archives):
            private.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(private, 0o700)
        # Other users may open a log by name but not list the folder. Each log is
        # readable by root and its writer only: supervisord's get mode 0640 from its
        # umask, and logs written before that are closed to others here.
        os.chmod(self.logs, 0o711)
        for log in self.logs.iterdir():
            mode = log.lstat().st_mode
            if stat.S_ISREG(mode) and mode & 0o007:
                os.chmod(log, stat.S_IMODE(mode) & ~0o007)

    def secret(self, name: str) -> str:
        """Return the secret stored as ``name``, creating it on first use (mode 0600)."""
        path = self.secrets / name
        if path.exists():
            return path.read_text().strip()
        value = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(value + "\n")
        return value


def default_layout() -> StateLayout:
    return StateLayout(Path(os.environ.get("AISWA_STATE_DIR", ROOT / ".state")).resolve())


def is_root() -> bool:
    return os.geteuid() == 0


def can_enter(user: str, path: Path) -> bool:
    """Whether ``user`` can reach ``path`` through every parent folder."""
    if not is_root() or shutil.which("runuser") is None:
        return True
    result = subprocess.run(
        ["runuser", "-u", user, "--", "test", "-x", str(path)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0
