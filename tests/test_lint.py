"""The code passes ruff (pyflakes, pycodestyle errors and warnings; rules and line length in
ruff.toml), so an unused import, an undefined name or an over-long line fails the suite
rather than waiting for someone to run the linter by hand."""

import subprocess
import sys

from conftest import ROOT


def test_ruff_check_finds_nothing():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
