"""Start a program with a single-use OpenBao login handed over through a pipe.

Usage::

    python -m aiswa_mesh.deliver --port P --approle users [--state DIR] -- COMMAND...

supervisord runs every workload through this wrapper, in the role of the
trusted orchestrator of OpenBao's AppRole pattern. It mints a response-wrapped,
single-use secret id with the orchestrator token (OpenBao.bootstrap_payload),
writes the payload into a pipe, and replaces itself with COMMAND, which
inherits the pipe's read end and finds its number in AISWA_OPENBAO_BOOTSTRAP_FD.
The payload never touches a file or the environment, and every start,
including supervisord's restarts, gets a new one.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from pathlib import Path

import httpx

from ._openbao_pki import OpenBaoError
from ._state import default_layout
from .openbao import BOOTSTRAP_FD_VARIABLE, OpenBao

log = logging.getLogger("aiswa.deliver")


def payload_with_retries(bao: OpenBao, approle: str, timeout: float = 60.0) -> bytes:
    """Mint the login payload, retrying while OpenBao is unreachable or sealed."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            return bao.bootstrap_payload(approle)
        except (OpenBaoError, httpx.HTTPError) as exc:
            # 4xx other than a sealed server (503) will not get better.
            if isinstance(exc, OpenBaoError) and exc.status < 500:
                raise SystemExit(f"deliver: OpenBao rejected the secret id request for "
                                 f"{approle}: {exc}. Run `make up` again to reconfigure "
                                 "OpenBao") from None
            attempt += 1
            if time.monotonic() > deadline:
                raise SystemExit(f"deliver: no secret id for {approle} within {timeout:.0f} s; "
                                 f"is OpenBao up? (last error: {exc})") from None
            delay = min(0.5 * 2 ** attempt, 5.0) * random.uniform(0.5, 1.0)
            log.warning("OpenBao not ready for %s (%s); retrying in %.1f s", approle, exc, delay)
            time.sleep(delay)


def pipe_with(payload: bytes) -> int:
    """Return the read end of a new pipe that contains ``payload``, inheritable by children."""
    read_end, write_end = os.pipe()
    try:
        # A pipe buffers at least 4 KiB (POSIX PIPE_BUF) without a reader, and
        # the payload is under 1 KiB.
        os.write(write_end, payload)
    finally:
        os.close(write_end)
    os.set_inheritable(read_end, True)
    return read_end


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aiswa_mesh.deliver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, default=None,
                        help="state folder (default: AISWA_STATE_DIR or .state in the checkout)")
    parser.add_argument("--port", type=int, required=True, help="OpenBao's port on 127.0.0.1")
    parser.add_argument("--approle", required=True, help="the AppRole to log in as, e.g. users")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- followed by the program and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    bao = OpenBao(args.state or default_layout(), args.port)
    read_end = pipe_with(payload_with_retries(bao, args.approle))
    os.environ[BOOTSTRAP_FD_VARIABLE] = str(read_end)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        raise SystemExit(f"deliver: cannot start {command[0]!r}: {exc}") from None


if __name__ == "__main__":
    main()
