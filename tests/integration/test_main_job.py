"""The main job end to end through the gateway, checked against radon."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

from radon.complexity import cc_visit
from radon.visitors import Class

from conftest import ROOT, STDLIB, python_files, wait_run


def _radon_complexities(package):
    expected = {}
    for relative in python_files(package):
        source = (package / relative).read_text(encoding="utf-8")
        for block in cc_visit(source):
            if isinstance(block, Class):
                for method in block.methods:
                    expected[(relative, method.lineno, method.name)] = method.complexity
            else:
                expected[(relative, block.lineno, block.name)] = block.complexity
    return expected


def test_cli_analyze_json_matches_find_and_radon(layout, gateway_url, ca_cert, tmp_path):
    # The package that `make demo` analyses.
    package = STDLIB / "email"
    env_args = ["--api-url", gateway_url, "--ca-cert", ca_cert,
                "--token-file", str(tmp_path / "token.json")]
    cli = [sys.executable, "-m", "aiswa_cli.main", *env_args]
    subprocess.run([*cli, "login", "--api-key-file", str(layout.admin_key)], check=True,
                   capture_output=True, cwd=ROOT)
    result = subprocess.run([*cli, "analyze", str(package), "--json", "--project", "e2e-email"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)

    assert output["run"]["state"] == "RUN_STATE_COMPLETED"
    report = output["report"]
    assert sorted(f["path"] for f in report["files"]) == python_files(package)
    assert report["summary"]["files"] == len(python_files(package))
    assert report["summary"]["files_with_errors"] == 0

    measured = {
        (f["path"], fn["line_start"], fn["name"]): fn["cyclomatic_complexity"]
        for f in report["files"] for fn in f["functions"]
    }
    expected = _radon_complexities(package)
    assert len(expected) > 400
    missing = {key: value for key, value in expected.items() if key not in measured}
    assert not missing
    differing = {key: (measured[key], value) for key, value in expected.items()
                 if measured[key] != value}
    assert not differing

    roadmap = output["roadmap"]
    assert roadmap["run_id"] == output["run"]["run_id"]
    ranks = [item["rank"] for item in roadmap["items"]]
    assert ranks == list(range(1, len(ranks) + 1))
    scores = [item["wsjf"] for item in roadmap["items"]]
    assert scores == sorted(scores, reverse=True)


def test_report_and_roadmap_commands(admin, layout, gateway_url, ca_cert, tmp_path):
    package = STDLIB / "json"
    env_args = ["--api-url", gateway_url, "--ca-cert", ca_cert,
                "--token-file", str(tmp_path / "token.json")]
    cli = [sys.executable, "-m", "aiswa_cli.main", *env_args]
    subprocess.run([*cli, "login", "--api-key-file", str(layout.admin_key)], check=True,
                   capture_output=True, cwd=ROOT)
    analyzed = json.loads(subprocess.run(
        [*cli, "analyze", str(package), "--json", "--project", "e2e-commands"],
        capture_output=True, text=True, cwd=ROOT, check=True, timeout=600).stdout)
    run_id = analyzed["run"]["run_id"]
    project_id = analyzed["project"]["project_id"]

    report = json.loads(subprocess.run([*cli, "report", run_id, "--json"], capture_output=True,
                                       text=True, cwd=ROOT, check=True).stdout)
    assert report == analyzed["report"]
    text = subprocess.run([*cli, "report", run_id], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout
    assert f"files analysed        {len(python_files(package))}" in text

    roadmap = json.loads(subprocess.run([*cli, "roadmap", project_id, "--json"],
                                        capture_output=True, text=True, cwd=ROOT,
                                        check=True).stdout)
    assert roadmap["run_id"] == run_id
    assert roadmap == analyzed["roadmap"]


def test_report_lists_duplicated_code(admin, project):
    # One real module twice under two names, plus a file with nothing in common.
    original = (STDLIB / "json" / "decoder.py").read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in (("pkg/decoder.py", original), ("pkg/copy_of_decoder.py", original),
                              ("pkg/other.py", b"x = 1\n")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    uploaded = admin.upload(project["project_id"], "dup.tar.gz", buffer.getvalue())
    run = wait_run(admin, admin.start_run(project["project_id"], uploaded["archive_id"])["run_id"])
    assert run["state"] == "RUN_STATE_COMPLETED"

    report = admin.report(run["run_id"])
    lines = original.count(b"\n")
    assert report["summary"]["duplicates"] == 1
    assert report["duplicates"] == [{
        "path_a": "pkg/copy_of_decoder.py", "line_start_a": 1, "line_end_a": lines,
        "path_b": "pkg/decoder.py", "line_start_b": 1, "line_end_b": lines,
        "tokens": report["duplicates"][0]["tokens"],
    }]
    assert report["duplicates"][0]["tokens"] > 1000
