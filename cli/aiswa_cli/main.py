"""aiswa: analyse a source tree with the AI-SWA platform and read its roadmap.

login, analyze, report, roadmap and status talk only to the gateway's public
API. The gateway address, CA certificate and token file come from --api-url,
--ca-cert and --token-file, or AISWA_API_URL, AISWA_CA_CERT and
AISWA_TOKEN_FILE. check, mesh and policy are for the operators of a local
platform and read its state folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ._api import DEFAULT_URL, ApiError, Client, archive_folder, default_ca_cert, default_token_file

_TERMINAL = {"RUN_STATE_COMPLETED", "RUN_STATE_FAILED"}


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _count(number: int, noun: str) -> str:
    """Return "1 item" or "3 items"."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _print_summary(report: dict[str, Any]) -> None:
    summary = report["summary"]
    print(f"Report of run {report['run_id']} (engine: {report['engine']})")
    print(f"  files analysed        {summary['files']}")
    print(f"  functions             {summary['functions']}")
    print(f"  files that failed     {summary['files_with_errors']}")
    print(f"  source lines          {summary['sloc']}")
    print(f"  mean / max complexity {summary['mean_cyclomatic_complexity']:.2f} / "
          f"{summary['max_cyclomatic_complexity']}")
    print(f"  mean maintainability  {summary['mean_maintainability_index']:.1f}")
    duplicates = summary.get("duplicates", 0)
    print(f"  duplicated code       {_count(duplicates, 'pair')} of ranges")
    functions = [(fn, f["path"]) for f in report["files"] for fn in f["functions"]]
    functions.sort(key=lambda pair: -pair[0]["cyclomatic_complexity"])
    if functions:
        print("  most complex functions:")
        for fn, path in functions[:5]:
            print(f"    {fn['cyclomatic_complexity']:>4}  {path}:{fn['line_start']} "
                  f"{fn['qualified_name']}")


def _print_roadmap(roadmap: dict[str, Any], top: int) -> None:
    items = roadmap.get("items", [])
    print(f"Roadmap of run {roadmap['run_id']}: {_count(len(items), 'item')}, best WSJF first")
    print(f"  {'rank':>4}  {'wsjf':>6}  target / problem")
    for item in items[:top] if top else items:
        target = item["path"] + (f":{item['line']} {item['qualified_name']}"
                                 if item["qualified_name"] else "")
        print(f"  {item['rank']:>4}  {item['wsjf']:>6.2f}  {target}")
        print(f"  {'':>4}  {'':>6}  {item['problem']}")


def _wait(client: Client, run_id: str, timeout: float, quiet: bool) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    # On a terminal the progress line is rewritten in place. In a log, each
    # change gets a line of its own, because carriage returns would pile up.
    terminal = sys.stderr.isatty()
    last_line = ""
    while True:
        run = client.run(run_id)
        if not quiet:
            done, total = run["files_done"], run["files_total"]
            state = run["state"].removeprefix("RUN_STATE_").lower()
            # The total stays 0 until the worker reports its first batch of files.
            files = f"{done}/{total} files" if total else "counting files"
            line = f"  {state:<10} {files:<20}"
            if terminal:
                print(f"\r{line}", end="", file=sys.stderr, flush=True)
            elif line != last_line:
                print(line.rstrip(), file=sys.stderr, flush=True)
            last_line = line
        if run["state"] in _TERMINAL:
            if not quiet and terminal:
                print(file=sys.stderr)
            return run
        if time.monotonic() > deadline:
            raise ApiError(f"run {run_id} did not finish within {timeout:.0f} s; it is "
                           f"{run['state']}; check later with `aiswa status {run_id}`")
        time.sleep(0.5)


def _wait_roadmap(client: Client, project_id: str, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.roadmap(project_id, run_id)
        except ApiError as exc:
            if "HTTP 404" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def cmd_login(client: Client, args: argparse.Namespace) -> None:
    api_key = args.api_key or os.environ.get("AISWA_API_KEY", "")
    if args.api_key_file:
        try:
            api_key = Path(args.api_key_file).read_text().strip()
        except (OSError, ValueError) as exc:
            raise ApiError(f"cannot read the API key from {args.api_key_file} ({exc}); the first "
                           "admin's key is in .state/secrets/admin-api-key") from None
    if not api_key:
        raise ApiError("no API key: pass --api-key-file FILE, --api-key KEY or set AISWA_API_KEY")
    reply = client.login(api_key)
    if args.json:
        _print_json({"token_file": str(client.token_file), "expires_in": reply["expires_in"]})
    else:
        print(f"logged in; token saved to {client.token_file}, valid for "
              f"{reply['expires_in']} s")


def cmd_analyze(client: Client, args: argparse.Namespace) -> None:
    folder = Path(args.path).resolve()
    content, count = archive_folder(folder)
    project = client.find_or_create_project(args.project or folder.name)
    quiet = args.json
    if not quiet:
        print(f"Analysing {folder} ({count} files, {len(content) / 1024:.0f} KiB packed) "
              f"in project {project['name']} ({project['project_id']})", file=sys.stderr)
    archive = client.upload(project["project_id"], f"{folder.name}.tar.gz", content)
    run = client.start_run(project["project_id"], archive["archive_id"])
    run = _wait(client, run["run_id"], args.timeout, quiet)
    if run["state"] == "RUN_STATE_FAILED":
        raise ApiError(f"run {run['run_id']} failed: {run['error']}")
    report = client.report(run["run_id"])
    roadmap = _wait_roadmap(client, project["project_id"], run["run_id"], args.timeout)
    if args.json:
        _print_json({"project": project, "run": run, "report": report, "roadmap": roadmap})
        return
    _print_summary(report)
    print()
    _print_roadmap(roadmap, args.top)


def cmd_report(client: Client, args: argparse.Namespace) -> None:
    report = client.report(args.run)
    _print_json(report) if args.json else _print_summary(report)


def cmd_roadmap(client: Client, args: argparse.Namespace) -> None:
    roadmap = client.roadmap(args.project, args.run or "", args.limit)
    _print_json(roadmap) if args.json else _print_roadmap(roadmap, 0)


def cmd_status(client: Client, args: argparse.Namespace) -> None:
    run = client.run(args.run)
    if args.json:
        _print_json(run)
    else:
        print(f"run {run['run_id']}: {run['state']} ({run['files_done']}/{run['files_total']} "
              f"files){' error: ' + run['error'] if run['error'] else ''}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="aiswa", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(top, {"api_url": os.environ.get("AISWA_API_URL", DEFAULT_URL),
                          "ca_cert": default_ca_cert(), "token_file": default_token_file()})
    # The same options, accepted after the command. With no default there, a value given
    # before the command stays unless the option is given again after it.
    anywhere = argparse.ArgumentParser(add_help=False)
    _global_options(anywhere, None)
    sub = top.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, parents=[anywhere])
        command.add_argument("--json", action="store_true",
                             help="print JSON (schema in docs/cli.md) instead of text")
        return command

    login = add("login", "exchange an API key for an access token")
    login.add_argument("--api-key-file", help="file that contains the API key")
    login.add_argument("--api-key", help="the API key itself (visible to other local users)")

    analyze = add("analyze", "archive a folder, analyse it and print the report and roadmap")
    analyze.add_argument("path", help="folder to analyse")
    analyze.add_argument("--project", help="project name (default: the folder's name)")
    analyze.add_argument("--top", type=int, default=10, help="roadmap items to print (default 10)")
    analyze.add_argument("--timeout", type=float, default=600,
                         help="seconds to wait for the run and roadmap (default 600)")

    report = add("report", "print the report of a completed run")
    report.add_argument("run", help="run id")

    roadmap = add("roadmap", "print a project's roadmap")
    roadmap.add_argument("project", help="project id")
    roadmap.add_argument("--run", help="run id (default: the latest completed run)")
    roadmap.add_argument("--limit", type=int, default=0, help="items to print (0: all)")

    status = add("status", "print the state and progress of a run")
    status.add_argument("run", help="run id")

    # Commands for operators of the local platform. `aiswa COMMAND --help` lists their options.
    for name, help_text in PLATFORM_COMMANDS.items():
        command = sub.add_parser(name, help=help_text, add_help=False)
        command.add_argument("arguments", nargs=argparse.REMAINDER)
    return top


def _global_options(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None) -> None:
    """Add --api-url, --ca-cert and --token-file, with ``defaults`` or, if None, none at all."""

    def default(name: str) -> Any:
        return argparse.SUPPRESS if defaults is None else defaults[name]

    # argparse has no value for %(default)s when the default is SUPPRESS.
    default_note = "" if defaults is None else " (default %(default)s)"
    parser.add_argument("--api-url", default=default("api_url"),
                        help="gateway base URL" + default_note)
    parser.add_argument("--ca-cert", default=default("ca_cert"),
                        help="CA certificate that signed the gateway's certificate")
    parser.add_argument("--token-file", type=Path, default=default("token_file"),
                        help="where `login` saves the access token" + default_note)


PLATFORM_COMMANDS = {
    "check": "check the running local platform: programs, certificates, OPAs, pods",
    "mesh": "render mesh/topology.yaml's artifacts, or verify them",
    "policy": "explain a decision of the OPA policies, or render their topology data",
}


def _platform_command(name: str, arguments: list[str]) -> int:
    if name == "policy":
        from . import policy

        return policy.main(arguments)
    if name == "mesh":
        from aiswa_mesh.render import main as mesh

        return mesh(arguments)
    from aiswa_mesh.check import main as check

    return check(arguments)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # The reader closed the pipe early, as `aiswa report RUN | head` does.
        # Send the rest of the output nowhere, so that exiting does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: list[str]) -> int:
    if argv[:1] and argv[0] in PLATFORM_COMMANDS:
        return _platform_command(argv[0], argv[1:])
    top = parser()
    # A platform command's own options, such as --help, are unknown here.
    args, unknown = top.parse_known_args(argv)
    if args.command in PLATFORM_COMMANDS:
        return _platform_command(args.command, [*unknown, *args.arguments])
    if unknown:
        top.error(f"unrecognized arguments: {' '.join(unknown)}")
    handlers = {"login": cmd_login, "analyze": cmd_analyze, "report": cmd_report,
                "roadmap": cmd_roadmap, "status": cmd_status}
    try:
        client = Client(args.api_url, args.ca_cert, args.token_file)
        handlers[args.command](client, args)
    except ApiError as exc:
        print(f"aiswa: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
