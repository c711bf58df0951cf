"""Boot tier: the shipped compute-01 alone under QEMU. First boot reaches done,
nothing failed, and each compute service of a frontend is active on its own
(its peers are absent: keepalived takes the floating IP, HAProxy serves from
the local Nginx backup, the NFS share waits to be accessed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.vm.boot import boot_image
from tests.conftest import copy_shipped
from tests.vm import build, ssh, stop

pytestmark = [pytest.mark.boot, pytest.mark.roles]

HOST = "compute-01"   # the certificate's principal: strict host key checking
SERVICES = ("chrony", "haproxy", "keepalived", "nginx", "docker", "distcc",
            "srv-share.automount")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("roles-boot")
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    project = root / "proj"
    copy_shipped(project)
    cluster = project / "profiles/cluster.yaml"
    pub = key.with_suffix(".pub").read_text().strip()
    cluster.write_text(cluster.read_text().replace("ssh_authorized_keys: []",
                                                   f"ssh_authorized_keys: ['{pub}']"))
    build(project, "compute-01")
    return project / "output/compute-01.img", key


def test_frontend_alone_runs_its_services(image: tuple[Path, Path], tmp_path: Path) -> None:
    img, key = image
    result = boot_image(img, host="compute-01", overlay=tmp_path / "overlay.qcow2",
                        timeout=1200, keep=True, memory_mib=1024)  # a Pi 3 has 1 GiB
    port = result.ssh_port

    def on(command: str) -> str:
        return ssh(port, key, command, HOST)
    try:
        assert result.progress[-1] == "done"
        # ssh() returns "" when it fails: make that visible before the empty-output checks
        assert on("hostname") == "compute-01"
        assert on("sudo systemctl --failed --plain --no-legend") == ""
        for unit in SERVICES:
            assert on(f"systemctl is-active {unit}") == "active", unit
        # alone, the frontend holds the floating IP (VRRP needs a few adverts)
        on("for i in $(seq 30); do ip -4 -o addr show eth0 | grep -q 10.20.0.30 "
           "&& break; sleep 1; done")
        assert "10.20.0.30/24" in on("ip -4 -o addr show eth0")
        # HAProxy answers from the local Nginx while the backends are away
        page = on("curl -fsS http://127.0.0.1:80/")
        assert "Served by compute-01 (frontend)" in page
        assert on("curl -fsS http://127.0.0.1:8080/healthz") == "ok compute-01"
        # alone, the swarm join waits in its service for the other managers
        assert on("systemctl is-enabled pibake-swarm-join") == "enabled"
        assert "waiting for a swarm manager" in on(
            "sudo journalctl -b -u pibake-swarm-join --no-pager -o cat")
        swarm = on("cat /etc/pibake/swarm.env")
        assert "PIBAKE_SWARM_BOOTSTRAP=compute-01" in swarm
    finally:
        stop(result.pid, port, key, HOST)
