"""Boot tier: the mini project's node on the default base, debian-trixie (arm64),
built through the CLI with --strict and booted to the first-boot runner's
``done``. In CI: the default base must boot there, not only on demand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.vm.boot import boot_image
from tests.vm import keyed_project, ssh, stop

pytestmark = [pytest.mark.boot]


def test_trixie_arm64_builds_and_boots(tmp_path: Path) -> None:
    project, key = keyed_project(tmp_path)
    for host in ("node-01", "node-02"):
        profile = project / f"profiles/{host}.yaml"
        # no base: in the host file -> cluster.base, whose default is debian-trixie
        profile.write_text(profile.read_text().replace("base: debian-bookworm\n", ""))
    done = subprocess.run([sys.executable, "-m", "builder", "-C", str(project), "build",
                           "--strict", "node-01"], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((project / "output/node-01.manifest.json").read_text())
    assert manifest["base"]["name"] == "debian-trixie"
    assert manifest["base"]["suite"] == "trixie"
    assert manifest["base"]["suites"][0] == "trixie"
    assert manifest["base"]["skipped_suites"] == []       # --strict: none may be skipped
    assert manifest["packages"]["linux-image-arm64"]
    assert manifest["packages"]["libc6"].split("+")[0].startswith("2.41")

    result = boot_image(project / "output/node-01.img", host="node-01", timeout=900, keep=True)
    try:
        assert result.progress[-1] == "done"
        port = result.ssh_port
        assert ssh(port, key, "hostname") == "node-01"
        assert ssh(port, key, "cut -d. -f1 /etc/debian_version") == "13"
        failed = ssh(port, key, "sudo systemctl --failed --plain --no-legend | cut -d' ' -f1")
        assert failed == ""
        assert ssh(port, key, "sudo systemctl is-system-running --wait") == "running"
    finally:
        stop(result.pid, result.ssh_port, key)
