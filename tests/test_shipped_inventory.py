"""Roles tier (on demand): the shipped inventory built as its user builds it,
``pibake build --all``, then once more warm; every image opened on its own.

No two of the eight images share an identity (machine-id, SSH host keys) or a
secret a package generated while the shared role was built: those are kept out
of the cached roles and made per host (pkgsecrets), so a role's files that a
maintainer script wrote from randomness must not appear twice.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from builder.emulate.pkgsecrets import PACKAGE_SECRETS
from tests.conftest import REPO
from tests.test_build import pibake
from tests.test_lanmain_image import Root

pytestmark = [pytest.mark.integration, pytest.mark.roles]

HOSTS = sorted(p.stem for p in (REPO / "profiles").glob("*.yaml") if p.stem != "cluster")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("shipped") / "proj"
    shutil.copytree(REPO / "profiles", project / "profiles")
    shutil.copytree(REPO / "layers", project / "layers", symlinks=True)
    done = pibake(project, "build", "--all", timeout=4 * 3600)
    assert done.returncode == 0, done.stderr[-4000:]
    return project


def test_the_shipped_inventory_has_eight_hosts() -> None:
    assert len(HOSTS) == 8, HOSTS


def test_every_host_has_its_image_and_side_files(shipped: Path) -> None:
    for host in HOSTS:
        out = shipped / "output"
        for suffix in (".img", ".img.sha256", ".img.bmap", ".manifest.json"):
            assert (out / f"{host}{suffix}").is_file(), (host, suffix)
        manifest = json.loads((out / f"{host}.manifest.json").read_text())
        profile = (shipped / f"profiles/{host}.yaml").read_text()
        layers = re.search(r"^layers: \[(.*)\]$", profile, re.M)
        assert layers, profile
        assert [layer["name"] for layer in manifest["layers"]] == [
            name.strip() for name in layers.group(1).split(",")]


def test_a_second_build_all_is_warm(shipped: Path) -> None:
    plan = pibake(shipped, "plan", "--all", timeout=600)
    assert plan.returncode == 0, plan.stderr
    stages = re.findall(r"^  (base|role)  [0-9a-f]{16}  (\w+)$", plan.stdout, re.M)
    assert len(stages) == 2 * len(HOSTS)
    assert {state for _, state in stages} == {"cached"}, plan.stdout
    again = pibake(shipped, "build", "--all")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "bootstrap" not in again.stderr and "==> layer" not in again.stdout + again.stderr
    assert again.stdout.count("(role cached)") == len(HOSTS), again.stdout


def _regular_files(root: Root, pattern: str) -> list[str]:
    """The image's regular files matching ``pattern`` (a path; '*' in its last part)."""
    folder, _, name = pattern.rpartition("/")
    listing = subprocess.run(["debugfs", "-R", f"ls -l {folder}", str(root.fs)],
                             capture_output=True, text=True).stdout
    found = []
    rx = re.compile("^" + re.escape(name).replace(r"\*", ".*") + "$")
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 9 and parts[1].startswith("10") and rx.match(parts[-1]):
            found.append(f"{folder}/{parts[-1]}")
    return found


def test_no_two_images_share_an_identity_or_a_package_secret(shipped: Path,
                                                            tmp_path: Path) -> None:
    holders: dict[tuple[str, bytes], list[str]] = defaultdict(list)
    seen: dict[str, list[str]] = defaultdict(list)
    for host in HOSTS:
        root = Root(shipped / f"output/{host}.img", tmp_path / host)
        for secret in PACKAGE_SECRETS:
            for pattern in secret.paths:
                for path in _regular_files(root, pattern):
                    data = root.debugfs(f"cat {path}").encode()
                    seen[path].append(host)
                    if data.strip() and data != b"uninitialized\n":
                        holders[(path, data)].append(host)
        # made again on first boot by the packages' tools: never in an image
        for gone in ("/etc/bind/rndc.key", "/etc/ssl/private/ssl-cert-snakeoil.key"):
            assert not _regular_files(root, gone), (host, gone)
        shutil.rmtree(tmp_path / host)
    shared = {path: hosts for (path, _), hosts in holders.items() if len(hosts) > 1}
    assert not shared, shared
    # what every image must hold, each its own: its machine-id and host keys
    assert sorted(seen["/etc/machine-id"]) == HOSTS
    assert sorted(seen["/etc/ssh/ssh_host_ed25519_key"]) == HOSTS
