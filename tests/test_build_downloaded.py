"""Integration: a downloaded base, end to end, served from 127.0.0.1.

The Raspberry Pi download site is not reachable here, so a fixture image with
Raspbian stretch's layout is served by a local HTTP server and named as a
user base in cluster.yaml. Its root file system has no ARM programs, so the
test layer has files and templates only (no packages, no hooks).
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fixtures_raspbian import LD_SO_PRELOAD, make_raspbian_fixture, zip_fixture

from builder.image.assemble import read_ext4, read_vfat
from tests.conftest import write
from tests.test_build import extract, partitions

CLUSTER = """\
cluster:
  name: old
  domain: old.lan
  admin: {user: pi}
networks:
  lan: {cidr: 10.0.2.0/24, gateway: 10.0.2.2}
nodes:
  old-01: {model: pi2, network: lan, ip: 10.0.2.15}
bases:
  fixture-stretch:
    url: URL
    sha256: "SHA"
    arch: armhf
    suite: stretch
    boot_mount: /boot
"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("www")
    img = make_raspbian_fixture(root / "2018-11-13-raspbian-stretch-lite.img")
    zip_fixture(img)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def project(tmp: Path, url: str, sha: str) -> Path:
    root = tmp / "proj"
    write(root / "profiles/cluster.yaml", CLUSTER.replace("URL", url).replace("SHA", sha))
    write(root / "profiles/old-01.yaml", "base: fixture-stretch\nlayers: [motd]\n")
    write(root / "layers/motd/defaults.yaml", "# Line shown at login.\nmotd_text: hi\n")
    write(root / "layers/motd/templates/etc/motd.j2", "# {{ pibake_managed }}\n"
          "{{ motd_text }} {{ host.name }}\n")
    write(root / "layers/motd/files/etc/issue.net", "old cluster\n")
    return root


def build(proj: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", "-C", str(proj), "build", "old-01"],
                          capture_output=True, text=True, timeout=1800,
                          env={**__import__("os").environ, "PIBAKE_CACHE": str(cache)})


@pytest.mark.integration
def test_downloaded_stretch_base(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    archive = root / "2018-11-13-raspbian-stretch-lite.zip"
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    proj = project(tmp_path, f"{url}/{archive.name}", sha)
    done = build(proj, tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    img = proj / "output/old-01.img"
    parts = partitions(img)
    boot = extract(img, parts[0], tmp_path / "boot.vfat")
    rootfs = extract(img, parts[1], tmp_path / "root.ext4")
    assert subprocess.run(["fsck.ext4", "-fn", str(rootfs)], capture_output=True).returncode == 0
    disk = json.loads((proj / "output/old-01.manifest.json").read_text())["image"]["disk_id"]
    cmdline = read_vfat(boot, "/cmdline.txt").decode()
    assert f"root=PARTUUID={disk[2:]}-02" in cmdline
    assert "init_resize" not in cmdline                     # our runner grows the card
    assert "console=serial0,115200" in cmdline              # the rest of the base's line kept
    assert read_vfat(boot, "/kernel7.img").startswith(b"\x00fake kernel7")
    fstab = read_ext4(rootfs, "/etc/fstab").decode()
    assert f"PARTUUID={disk[2:]}-01\t/boot\tvfat" in fstab
    assert read_ext4(rootfs, "/etc/ld.so.preload").decode() == LD_SO_PRELOAD   # restored
    assert read_ext4(rootfs, "/etc/motd").decode().endswith("hi old-01\n")
    assert read_ext4(rootfs, "/etc/issue.net") == b"old cluster\n"
    dhcpcd = read_ext4(rootfs, "/etc/dhcpcd.conf").decode()
    assert dhcpcd.startswith("# A sample configuration for dhcpcd.")
    assert "static ip_address=10.0.2.15/24" in dhcpcd
    shadow = read_ext4(rootfs, "/etc/shadow").decode()
    assert "pi:!$6$fixture$" in shadow                      # default password locked
    manifest = json.loads((proj / "output/old-01.manifest.json").read_text())
    assert manifest["packages"] == {"dhcpcd5": "1:6.11.5-1+rpt7",
                                    "raspberrypi-kernel": "1.20181112-1"}
    assert manifest["base"] == {"name": "fixture-stretch", "kind": "image", "suite": "stretch",
                                "arch": "armhf", "sha256": sha,
                                "cache_key": manifest["base"]["cache_key"],
                                "suites": ["stretch"], "skipped_suites": []}


def test_checksum_mismatch_leaves_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    archive = root / "2018-11-13-raspbian-stretch-lite.zip"
    proj = project(tmp_path, f"{url}/{archive.name}", "0" * 64)
    cache = tmp_path / "cache"
    done = build(proj, cache)
    assert done.returncode == 4
    assert done.stderr.splitlines()[-1].startswith(
        "pibake: error: base 'fixture-stretch': checksum mismatch: expected 000")
    assert "Traceback" not in done.stderr
    assert not (proj / "output").exists() or not any((proj / "output").iterdir())
    leftovers = [p for p in (cache / "bases").rglob("*") if p.is_file()]
    assert leftovers == []


def test_download_404_one_line(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    proj = project(tmp_path, f"{url}/missing.zip", "1" * 64)
    done = build(proj, tmp_path / "cache")
    assert done.returncode == 4
    assert done.stderr.splitlines()[-1] == (
        f"pibake: error: base 'fixture-stretch': download failed: HTTP 404 for {url}/missing.zip;"
        " check the url in the base catalog or cluster.yaml")
