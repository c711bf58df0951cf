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
import stat
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from builder.content.secrets import Item, Store, _pattern_for
from builder.emulate.pkgsecrets import PACKAGE_SECRETS
from builder.inventory.config import load_inventory
from tests.conftest import REPO, copy_shipped
from tests.extfs import Ext4
from tests.test_build import extract, partitions, pibake

pytestmark = [pytest.mark.integration, pytest.mark.roles]

HOSTS = sorted(p.stem for p in (REPO / "profiles").glob("*.yaml") if p.stem != "cluster")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("shipped") / "proj"
    copy_shipped(project)
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


def test_no_two_images_share_an_identity_or_a_package_secret(shipped: Path,
                                                            tmp_path: Path) -> None:
    holders: dict[tuple[str, bytes], list[str]] = defaultdict(list)
    seen: dict[str, list[str]] = defaultdict(list)
    for host in HOSTS:
        root = Ext4.image_root(shipped / f"output/{host}.img")
        for secret in PACKAGE_SECRETS:
            for pattern in secret.paths:
                for path in root.regular_files(pattern):
                    data = root.debugfs(f"cat {path}").encode()
                    seen[path].append(host)
                    if data.strip() and data != b"uninitialized\n":
                        holders[(path, data)].append(host)
        # made again on first boot by the packages' tools: never in an image
        for gone in ("/etc/bind/rndc.key", "/etc/ssl/private/ssl-cert-snakeoil.key"):
            assert not root.regular_files(gone), (host, gone)
    shared = {path: hosts for (path, _), hosts in holders.items() if len(hosts) > 1}
    assert not shared, shared
    # what every image must hold, each its own: its machine-id and host keys
    assert sorted(seen["/etc/machine-id"]) == HOSTS
    assert sorted(seen["/etc/ssh/ssh_host_ed25519_key"]) == HOSTS


def _needle(store: Store, item: Item) -> str:
    """A piece of ITEM's private value that an image holding it contains and no
    other file plausibly does: a middle line of a key's base64 body, a TSIG
    secret, a password's first 8 characters (keepalived uses only those)."""
    rel = item.files[-1]
    text = store.read(rel)
    kind = _pattern_for(rel, item.kind)
    if kind in ("ssh-private", "x509-key"):
        body = text.strip().splitlines()[1:-1]
        return body[len(body) // 2]
    if kind == "tsig":
        found = re.search(r'secret "([^"]+)"', text)
        assert found, rel
        return found.group(1)
    if kind == "password":
        return text.strip()[:8]
    assert kind == "host-secret", (rel, kind)
    return text.strip()


def _found(needles: dict[str, str], data: Path, tmp: Path) -> set[str]:
    """The names whose needle occurs in the bytes of DATA (an image or a partition)."""
    patterns = tmp / "needles"
    patterns.write_text("".join(f"{n}\n" for n in needles.values()))
    out = subprocess.run(["grep", "-a", "-o", "-F", "-f", str(patterns), str(data)],
                         capture_output=True, text=True, errors="replace").stdout
    hits = set(out.split())
    return {name for name, needle in needles.items() if needle in hits}


def test_each_image_holds_only_the_secrets_its_host_needs(shipped: Path, tmp_path: Path) -> None:
    """Least privilege, on the bytes of each image: a CA's private key only in
    the deployer's, a host's private keys only in its own, a shared secret only
    in its holders', the store's host secrets in none, and nothing private on a
    boot partition; every image that carries secrets, and its side files, 0600."""
    inv = load_inventory(shipped)
    store = Store.at(inv)
    items = store.items()
    private = {name: item for name, item in items.items()
               if _pattern_for(item.files[-1], item.kind) in
               ("ssh-private", "x509-key", "tsig", "password", "host-secret")}
    needles = {name: _needle(store, item) for name, item in private.items()}
    allowed = {name: () if item.kind == "host-secret" else item.holders
               for name, item in private.items()}
    assert set(allowed["ssh_host_ca"]) == set(allowed["tls_root_ca"]) == {"deployer-01"}
    seen: dict[str, list[str]] = defaultdict(list)
    carried: dict[str, list[str]] = defaultdict(list)   # by the manifests
    for host in HOSTS:
        img = shipped / f"output/{host}.img"
        manifest = json.loads((shipped / f"output/{host}.manifest.json").read_text())
        for name in manifest["secrets"]:
            carried[name].append(host)
        assert manifest["secrets"], host       # every image has its own host keys at least
        for f in sorted(img.parent.glob(f"{host}.*")):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        for name in _found(needles, img, tmp_path):
            seen[name].append(host)
            assert host in allowed[name], f"{host}'s image holds {name}"
        boot = extract(img, partitions(img)[0], tmp_path / f"{host}.boot")
        assert not _found(needles, boot, tmp_path), host
        assert b"PRIVATE KEY" not in boot.read_bytes(), host
        boot.unlink()
    # the search finds what is there: every host key and CA in exactly its holders
    for name, item in private.items():
        if item.kind in ("ssh-host-key", "ssh-ca", "x509-ca"):
            assert sorted(seen[name]) == sorted(item.holders), name
        elif item.kind == "host-secret":
            assert not seen[name], name
        else:   # in exactly the images whose manifest names it, all of them holders
            assert sorted(seen[name]) == sorted(carried[name]), name
            assert set(carried[name]) <= set(item.holders), name
    assert not carried["lanmain_omapi"]     # ISC dhcpd's key: no shipped host uses dhcpd


def test_the_sense_hat_node_has_its_config_txt_lines(shipped: Path, tmp_path: Path) -> None:
    lines = ("dtparam=i2c_arm=on", "dtoverlay=rpi-sense")
    for host in HOSTS:
        img = shipped / f"output/{host}.img"
        boot = extract(img, partitions(img)[0], tmp_path / f"{host}.boot")
        config = subprocess.run(["mtype", "-i", str(boot), "::config.txt"], capture_output=True,
                                text=True, check=True).stdout.splitlines()
        root = Ext4.image_root(img)
        custom = root.read("/etc/default/raspi-firmware-custom").splitlines()
        if host == "lanmisc-01":
            assert all(line in config for line in lines), config
            assert custom == list(lines)
            assert root.read("/etc/modules-load.d/pibake-sensehat.conf").endswith("i2c-dev\n")
            assert "admin" in root.read("/etc/group").split("\ni2c:", 1)[1].split("\n", 1)[0]
        else:
            assert not any(line in config for line in lines), (host, config)
            assert custom == [], host
        boot.unlink()


def test_the_lanmisc_site_is_built_into_its_image(shipped: Path) -> None:
    root = Ext4.image_root(shipped / "output/lanmisc-01.img")
    page = root.read("/var/www/lanmisc/site/index.html")
    for host in HOSTS:          # the inventory's table, rendered by Hugo at build time
        assert f"<td>{host}</td>" in page, host
    assert "50-hugo-site.sh" not in root.names("/usr/local/lib/pibake/firstboot.d")
