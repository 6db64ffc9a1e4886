"""A long run keeps the code it started with (adaptreid.cli.import_whole_package)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, pkgutil, sys
import adaptreid
from adaptreid.cli import import_whole_package
before = sorted(k for k in sys.modules if k.startswith("adaptreid"))
missing = import_whole_package()
names = [m.name for m in pkgutil.walk_packages(adaptreid.__path__, "adaptreid.")]
names = [n for n in names if not n.endswith(".__main__")]
print(json.dumps({"before": before, "names": names, "missing": missing,
                  "loaded": sorted(k for k in sys.modules if k.startswith("adaptreid"))}))
"""


def test_train_adapt_and_demo_load_every_module_before_the_run_starts():
    """In a fresh interpreter, importing the CLI leaves most modules unloaded (they load where
    used); import_whole_package then loads every one, so that a run's lazy imports never
    pick up a module changed on disk while it runs. The three run commands call it."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "adaptreid.report.report" not in got["before"]  # lazy until used
    assert len(got["names"]) > 50
    # a module whose optional dependency is not installed is not used, so may stay unloaded
    assert set(got["missing"]) <= set(got["names"])
    assert set(got["names"]) - set(got["missing"]) <= set(got["loaded"])
    source = (ROOT / "adaptreid" / "cli.py").read_text()
    for command in ("cmd_train", "cmd_adapt", "cmd_demo"):
        body = source.split(f"def {command}(")[1].split("\ndef ")[0]
        assert "import_whole_package()" in body, command
