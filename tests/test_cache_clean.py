"""cache.clean_stale removes only what a dead build left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from builder import cache


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_clean_stale_keeps_live_builds_and_removes_dead_ones(tmp_path: Path) -> None:
    live, dead = os.getpid(), _dead_pid()
    keep = [f".role.tmp-{live}-k3x9q_1", f".base.tar.tmp-{live}", f".entry.old-{live}"]
    drop = [f".role.tmp-{dead}-a8b7c6", f".base.tar.tmp-{dead}", f".entry.old-{dead}"]
    for name in keep + drop:
        (tmp_path / name).mkdir()
    (tmp_path / "final-entry").mkdir()
    cache.clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "final-entry"])
