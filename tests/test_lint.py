"""Linters run as tests, so `make test` fails on a lint error as on a bug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_ruff() -> None:
    proc = subprocess.run([str(BIN / "ruff"), "check", "builder", "tests"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy() -> None:
    proc = subprocess.run([str(BIN / "mypy"), "builder"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shell_scripts_parse() -> None:
    scripts = sorted(REPO.glob("layers/*/hooks.d/*.sh")) + sorted(REPO.glob("firstboot/**/*.sh"))
    scripts += [REPO / "firstboot/pibake-firstboot", REPO / "scripts/setup-host.sh"]
    for script in scripts:
        proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
