"""The layering of README "The code", enforced: import-linter's contracts of pyproject.toml
pass, fail when a lower layer imports a higher one (config -> engine, even lazily) or a method
imports the loop that calls it; no import cycle (function-level imports counted); a Config is
built without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

importlinter = pytest.importorskip("importlinter", reason="import-linter is not installed")
grimp = pytest.importorskip("grimp", reason="import-linter's grimp is not installed")


def _run(root: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python *args`` in ``root`` with ``root``'s package (not this checkout's) importable."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package and pyproject.toml in ``root`` (no cache)."""
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return _run(root, "-c", code, "--no-cache")


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(ROOT / "adaptreid", dst / "adaptreid", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_lint_imports_passes():
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # a lazy (function-level) import counts as much as a top-level one
        (
            "config.py",
            "\n\ndef _sneaky():\n    from .engine import loop  # noqa: F401\n",
            "Layers",
        ),
        ("methods/msplr.py", "\nfrom ..engine.loop import adapt  # noqa: F401,E402\n", "A method"),
    ],
)
def test_lint_imports_fails_on_an_upward_import(tmp_path, module, line, contract):
    repo = _copy(tmp_path)
    path = repo / "adaptreid" / module
    path.write_text(path.read_text() + line)
    out = _lint_imports(repo)
    assert out.returncode != 0, out.stdout
    broken = [ln for ln in out.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), out.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in sorted(edges):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycle_lazy_imports_included(tmp_path):
    assert _cycles(grimp.build_graph("adaptreid", include_external_packages=False)) == []
    # the check sees a cycle made by one function-level import
    repo = _copy(tmp_path)
    path = repo / "adaptreid" / "errors.py"
    path.write_text(path.read_text() + "\n\ndef _sneaky():\n    from . import registry\n")
    code = (
        "import json, sys; sys.path.append(sys.argv[1]); import grimp;"
        "from test_layers import _cycles;"
        "g = grimp.build_graph('adaptreid', include_external_packages=False);"
        "print(json.dumps(_cycles(g)))"
    )
    out = _run(repo, "-c", code, str(ROOT / "tests"))
    assert out.returncode == 0, out.stderr
    assert ["adaptreid.errors", "adaptreid.registry"] in json.loads(out.stdout)


def test_config_builds_without_torch():
    code = (
        "import sys; from adaptreid.config import Config, load_config;"
        "c = Config(); load_config('configs/past/market1501_to_dukemtmc.yaml');"
        "print(c.method.name, 'torch' in sys.modules, sorted(m for m in sys.modules"
        " if m.startswith('adaptreid')))"
    )
    out = _run(ROOT, "-c", code, timeout=120)
    assert out.returncode == 0, out.stderr
    name, torch_loaded, modules = out.stdout.split(" ", 2)
    assert name == "msplr" and torch_loaded == "False", out.stdout
    assert "adaptreid.methods" not in modules and "adaptreid.engine" not in modules


def test_no_module_over_600_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "adaptreid").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert long == {}


#: Functions that still take more than 8 parameters (issue 25 reduced the pseudo-label and
#: evaluation ones to settings objects and left these). A new one fails the test below, and
#: one reduced must leave the list. Target: none. Left: the synthetic domains' registered
#: dataset factory, whose keyword parameters are the dataset's options themselves (the flat
#: ``data.source_options`` / ``target_options`` keys, checked against its signature by
#: ``build_dataset`` / ``open_dataset``).
MANY_PARAMETERS = {
    "adaptreid/data/synthetic.py:factory",
}


def test_no_new_function_with_more_than_8_parameters():
    import ast

    found = set()
    for path in sorted((ROOT / "adaptreid").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                if len([n for n in names if n not in ("self", "cls")]) > 8:
                    found.add(f"{path.relative_to(ROOT)}:{node.name}")
    assert found == MANY_PARAMETERS, (
        sorted(found - MANY_PARAMETERS),
        sorted(MANY_PARAMETERS - found),
    )
