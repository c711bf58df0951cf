"""Boot tier: `pibake cluster-test` on the mini project. Both nodes boot
together, every check their layers ship passes from inside the VMs, then
node-02 dies and boots again from a fresh overlay of its image: it must come
back with the same SSH host key and pass its checks again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.vm import build, keyed_project

pytestmark = pytest.mark.boot


def test_cluster_test_boots_checks_and_rebuilds_a_node(tmp_path: Path) -> None:
    project, _ = keyed_project(tmp_path)
    build(project, "node-01", "node-02")
    done = subprocess.run(
        [sys.executable, "-m", "builder", "-C", str(project), "cluster-test", "web",
         "--timeout", "600"],
        capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for host in ("node-01", "node-02"):
        assert f"  up  {host:14} first boot done in " in out
        for check in ("10-firstboot", "20-units"):
            assert f"  ok  {host:14} {check:24}" in out
    # the rebuilt node is itself again and passes its checks once more
    rebuilt = out.split("node-02 dies and is rebuilt from its image\n", 1)[1]
    assert f"  ok  {'node-02':14} {'same-host-key':24}" in rebuilt
    assert f"  ok  {'node-02':14} {'20-units':24}" in rebuilt
    table = out.split("cluster-test web: passed\n", 1)[1]
    assert "  joined " in table and "  rebuild node-02 " in table
    assert "qemu peak memory node-02#2" in table and "wall time " in table
