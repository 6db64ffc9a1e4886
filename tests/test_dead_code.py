"""No dead code in ``adaptreid/``: vulture at 60% confidence finds nothing (names only a
framework or a registry calls are listed, with the reason, in vulture_whitelist.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("vulture", reason="vulture is not installed")


def _vulture(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vulture", *map(str, paths), "--min-confidence", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_no_dead_code():
    out = _vulture(ROOT / "adaptreid", ROOT / "vulture_whitelist.py")
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


def test_vulture_finds_an_unused_function(tmp_path):
    pkg = tmp_path / "pkg.py"
    pkg.write_text("def used():\n    return 1\n\n\ndef forgotten():\n    return 2\n\n\nused()\n")
    out = _vulture(pkg)
    assert out.returncode != 0 and "unused function 'forgotten'" in out.stdout
