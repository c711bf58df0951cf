"""Integration: build the lanmain pair's images and open them independently (debugfs).

Uses the suite's cached bookworm arm64 base (the pair is modelled as Pi 3s
here; the shipped cluster's Pi 1s differ only in the armel base).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.extfs import Ext4
from tests.lanmain_project import make_lanmain_project
from tests.test_build import pibake

pytestmark = [pytest.mark.integration, pytest.mark.roles]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    project = make_lanmain_project(tmp_path_factory.mktemp("lanmain") / "proj")
    first = pibake(project, "build", "lm-a")
    assert first.returncode == 0, first.stderr
    second = pibake(project, "build", "lm-b")
    assert second.returncode == 0, second.stderr
    return {"project": project, "first": first, "second": second}


def test_second_host_of_the_pair_reuses_the_role(pair: dict[str, object]) -> None:
    second = pair["second"]
    assert isinstance(second, subprocess.CompletedProcess)
    assert "(role cached)" in second.stdout


def test_primary_image_has_its_services_configured_and_enabled(pair: dict[str, object],
                                                               tmp_path: Path) -> None:
    project = pair["project"]
    assert isinstance(project, Path)
    img = project / "output/lm-a.img"
    assert img.stat().st_mode & 0o777 == 0o600   # it carries the pair's secrets
    manifest = json.loads((project / "output/lm-a.manifest.json").read_text())
    assert {"lanmain_xfer", "lanmain_ha_api"} <= set(manifest["secrets"])
    assert "lanmain_omapi" not in manifest["secrets"]      # ISC dhcpd's: held, not carried
    root = Ext4.image_root(img)
    kea = root.read("/etc/kea/kea-dhcp4.conf")
    assert '"this-server-name": "lm-a"' in kea
    for lib in re.findall(r'"library": "([^"]+)"', kea):   # the hooks exist where Kea looks
        assert root.owner_mode(lib)[2] & 0o444, lib
    assert root.owner_mode("/etc/kea/kea-dhcp4.conf") == (0, 0, 0o640)
    assert root.owner_mode("/etc/bind/pibake/xfer.key") == (0, 0, 0o640)
    tmpfiles = root.read("/etc/tmpfiles.d/pibake-lanmain.conf")
    assert "z /etc/bind/pibake/xfer.key 0640 root bind -" in tmpfiles
    groups = root.read("/etc/group")
    assert re.search(r"^bind:", groups, re.M) and re.search(r"^_kea:", groups, re.M)
    kea_gid = int(re.search(r"^_kea:[^:]*:(\d+):", groups, re.M).group(1))  # type: ignore[union-attr]
    # owners: names looked up in the image after the packages made the group
    assert root.owner_mode("/etc/kea/kea-api-password") == (0, kea_gid, 0o640)
    assert root.read("/etc/kea/kea-api-password").strip() in kea
    assert "type primary;" in root.read("/etc/bind/named.conf.local")
    assert "; serial" in root.read("/etc/bind/pibake/db.forward")
    wants = root.debugfs("ls /etc/systemd/system/multi-user.target.wants")
    for unit in ("kea-dhcp4-server.service", "named.service", "chrony.service",
                 "vsftpd.service", "pibake-httpd.service"):
        assert unit in wants, unit
    assert "kea-ctrl-agent.service" in root.debugfs(
        "ls /etc/systemd/system/kea-dhcp4-server.service.wants")
    assert "isc-dhcp-server" not in root.debugfs("ls /etc/rc2.d").replace(
        "K01isc-dhcp-server", "")
    assert root.owner_mode("/srv/httpd/bin/busybox") == (0, 0, 0o755)
    assert root.owner_mode("/srv/httpd/www/index.html")[2] == 0o644
    assert re.search(r"^pibake-httpd:[^:]*:\d+:\d+:.*:/usr/sbin/nologin$",
                     root.read("/etc/passwd"), re.M)
    assert "anonymous_enable=YES" in root.read("/etc/vsftpd.conf")
    assert root.owner_mode("/usr/local/lib/pibake/checks.d/40-lanmain-dhcp-ha.sh")[2] == 0o755
    assert root.owner_mode("/usr/local/lib/pibake/firstboot.d/40-dns-serial-guard.sh")[2] == \
        0o755


def test_secondary_image_is_the_secondary(pair: dict[str, object], tmp_path: Path) -> None:
    project = pair["project"]
    assert isinstance(project, Path)
    root = Ext4.image_root(project / "output/lm-b.img")
    assert '"this-server-name": "lm-b"' in root.read("/etc/kea/kea-dhcp4.conf")
    assert "type secondary;" in root.read("/etc/bind/named.conf.local")
    assert "LANMAIN_ROLE=secondary" in root.read("/etc/pibake/lanmain.env")
