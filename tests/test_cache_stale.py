"""clean_stale removes only temporaries whose build process is gone."""

from __future__ import annotations

import os
from pathlib import Path

from builder.cache import clean_stale


def test_live_builds_temporaries_are_kept(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the kernel's default pid_max: never a live process
    names = [f".role.tmp-{os.getpid()}-k3x_9ab", f".role.tmp-{dead}-k3x_9ab",
             f".host.tmp-{os.getpid()}", f".host.tmp-{dead}", f".x.old-{dead}", "keep"]
    for name in names:
        (tmp_path / name).mkdir()
    clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".role.tmp-{os.getpid()}-k3x_9ab", f".host.tmp-{os.getpid()}", "keep"])
