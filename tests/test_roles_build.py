"""Integration: build the shipped compute-01 (frontend, swarm bootstrap manager) and
open its image independently: the rendered role configs, the enabled units and
the packages their checkers were run for are all there."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.image.assemble import read_ext4
from tests.conftest import copy_shipped
from tests.test_build import extract, partitions, pibake

pytestmark = [pytest.mark.integration, pytest.mark.roles]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("roles") / "proj"
    copy_shipped(project)
    result = pibake(project, "build", "compute-01")
    assert result.returncode == 0, result.stderr
    img = project / "output/compute-01.img"
    return extract(img, partitions(img)[1], project / "root.ext4")


def stat(root: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"stat {path}", str(root)], capture_output=True,
                          text=True).stdout


def link(root: Path, path: str) -> str:
    out = stat(root, path)
    assert "Type: symlink" in out, (path, out)
    return out.split('Fast link dest: "', 1)[1].split('"', 1)[0]


def test_role_configs_are_in_the_image(root: Path) -> None:
    ka = read_ext4(root, "/etc/keepalived/keepalived.conf").decode()
    assert "priority 150" in ka and "10.20.0.30/24 dev eth0" in ka
    assert b"server compute-03 10.20.0.33:8080 check" in read_ext4(root,
                                                                    "/etc/haproxy/haproxy.cfg")
    assert b"listen 8080 default_server;" in read_ext4(root,
                                                       "/etc/nginx/sites-available/default")
    swarm = read_ext4(root, "/etc/pibake/swarm.env").decode()
    assert "PIBAKE_SWARM_ROLE=manager\n" in swarm
    assert "PIBAKE_SWARM_BOOTSTRAP=compute-01\n" in swarm
    assert json.loads(read_ext4(root, "/etc/docker/daemon.json"))["live-restore"] is False
    assert b"What=10.20.0.21:/srv/nfs/share" in read_ext4(root,
                                                         "/etc/systemd/system/srv-share.mount")
    assert b"server 10.20.0.11 iburst" in read_ext4(root, "/etc/chrony/chrony.conf")
    assert b'ALLOWEDNETS="10.20.0.0/24"' in read_ext4(root, "/etc/default/distcc")
    assert b"compute-04:4" in read_ext4(root, "/etc/pibake/mpi/hostfile")
    assert "Mode:  0644" in stat(root, "/etc/keepalived/keepalived.conf")


def test_role_services_are_enabled(root: Path) -> None:
    wants = "/etc/systemd/system/multi-user.target.wants"
    for unit in ("haproxy", "keepalived", "nginx", "docker"):
        assert link(root, f"{wants}/{unit}.service").endswith(f"/{unit}.service")
    assert link(root, "/etc/systemd/system/remote-fs.target.wants/srv-share.automount") == \
        "/etc/systemd/system/srv-share.automount"
    # the checked packages are the ones in the image
    for binary in ("/usr/sbin/haproxy", "/usr/sbin/keepalived", "/usr/sbin/nginx",
                   "/usr/sbin/chronyd", "/usr/bin/distccd", "/usr/bin/mpiexec"):
        assert "Inode:" in stat(root, binary), binary
