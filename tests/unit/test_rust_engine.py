"""How the reflector picks its metrics engine, and what it does without the Rust core.

These tests hide aiswa_core when they need it missing, so they run whether or not
scripts/build-rust-ext.sh has installed it.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from aiswa_reflector._analysis import (
    RustAnalyzer,
    analyze_batch,
    analyzer,
    engine_name,
)
from aiswa_reflector.metrics import analyze_source

STDLIB = Path(sysconfig.get_paths()["stdlib"])
BUILD_SCRIPT = "scripts/build-rust-ext.sh"


@pytest.fixture
def without_rust_core(monkeypatch):
    # A None entry in sys.modules makes `import aiswa_core` raise ImportError.
    monkeypatch.setitem(sys.modules, "aiswa_core", None)


@pytest.mark.parametrize("value", [None, ""])
def test_default_engine_is_rust(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("AISWA_REFLECTOR_ENGINE", raising=False)
    else:
        monkeypatch.setenv("AISWA_REFLECTOR_ENGINE", value)
    assert engine_name() == "rust"


def test_python_engine_is_the_reference(monkeypatch):
    monkeypatch.setenv("AISWA_REFLECTOR_ENGINE", "python")
    assert engine_name() == "python"
    assert analyzer() is analyze_source


def test_python_engine_needs_no_rust_core(monkeypatch, without_rust_core):
    monkeypatch.setenv("AISWA_REFLECTOR_ENGINE", "python")
    assert analyzer()("a.py", b"x = 1\n").loc == 1


@pytest.mark.parametrize("value", [None, "rust"])
def test_missing_rust_core_names_build_script(monkeypatch, without_rust_core, value):
    if value is None:
        monkeypatch.delenv("AISWA_REFLECTOR_ENGINE", raising=False)
    else:
        monkeypatch.setenv("AISWA_REFLECTOR_ENGINE", value)
    with pytest.raises(RuntimeError) as raised:
        analyzer()
    message = str(raised.value)
    assert BUILD_SCRIPT in message
    assert "AISWA_REFLECTOR_ENGINE=python" in message


def test_unknown_engine_is_rejected(monkeypatch):
    monkeypatch.setenv("AISWA_REFLECTOR_ENGINE", "fortran")
    with pytest.raises(ValueError, match="'rust', 'python'"):
        analyzer()


def _start_reflector(hide_rust_core: bool, engine: str | None) -> subprocess.CompletedProcess:
    # The engine check runs before the configuration is read and before any
    # connection, so the reflector exits without touching the network.
    code = "import sys\n"
    if hide_rust_core:
        code += "sys.modules['aiswa_core'] = None\n"
    code += (
        "sys.argv = ['aiswa_reflector', 'serve']\n"
        "from aiswa_reflector.__main__ import main\n"
        "main()\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    if engine is not None:
        env["AISWA_REFLECTOR_ENGINE"] = engine
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_reflector_without_rust_core_fails_at_start():
    started = _start_reflector(hide_rust_core=True, engine=None)
    assert started.returncode == 1
    assert started.stderr.startswith("reflector: cannot start: the metrics engine is 'rust'")
    assert BUILD_SCRIPT in started.stderr
    assert "Traceback" not in started.stderr


def test_reflector_with_unknown_engine_fails_at_start():
    started = _start_reflector(hide_rust_core=False, engine="fortran")
    assert started.returncode == 1
    assert "AISWA_REFLECTOR_ENGINE='fortran' is unknown" in started.stderr


def test_rust_engine_batch_matches_reference(monkeypatch):
    pytest.importorskip("aiswa_core", reason=f"the Rust core is not installed; run {BUILD_SCRIPT}")
    monkeypatch.delenv("AISWA_REFLECTOR_ENGINE", raising=False)
    analyze = analyzer()
    assert isinstance(analyze, RustAnalyzer)
    files = [
        (path, (STDLIB / path).read_bytes())
        for path in ("json/decoder.py", "json/encoder.py", "json/scanner.py")
    ]
    files.append(("bad.py", b"def f(:\n"))
    expected = [analyze_source(path, content) for path, content in files[:3]]
    results = analyze_batch(files, analyze)
    assert results[:3] == expected
    assert results[3].error.startswith("SyntaxError at line 1")
    assert [result.path for result in results] == [path for path, _ in files]


def _stub_tree(core) -> ast.Module:
    package = Path(core.__file__).parent
    assert (package / "py.typed").is_file()
    return ast.parse((package / "__init__.pyi").read_text())


def test_typed_stub_ships_with_module():
    core = pytest.importorskip("aiswa_core", reason=f"the Rust core is not installed; run {BUILD_SCRIPT}")
    stub = _stub_tree(core)
    declared = {
        node.name: [argument.arg for argument in (*node.args.args, *node.args.kwonlyargs)]
        for node in stub.body
        if isinstance(node, ast.FunctionDef)
    }
    exported = {
        name: list(inspect.signature(getattr(core, name)).parameters)
        for name in core.__all__
        if callable(getattr(core, name)) and not inspect.ismodule(getattr(core, name))
    }
    assert declared == exported


def test_typed_stub_lists_result_keys():
    core = pytest.importorskip("aiswa_core", reason=f"the Rust core is not installed; run {BUILD_SCRIPT}")
    stub = _stub_tree(core)
    typed_dicts = {
        node.name: [item.target.id for item in node.body if isinstance(item, ast.AnnAssign)]
        for node in stub.body
        if isinstance(node, ast.ClassDef)
    }
    result = core.analyze_source("a.py", b"def f(x):\n    return x\n")
    assert typed_dicts["FileMetricsDict"] == list(result)
    assert typed_dicts["FunctionMetricsDict"] == list(result["functions"][0])
