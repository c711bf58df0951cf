"""Secrets in real images: each image carries its own identity and its layers'
secrets only, a rebuild carries the same ones, and a booted node proves its
identity with the host CA's certificate (strict checking, no trust on first use)."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import pytest

from builder.content.identity import machine_id
from builder.content.secrets import Store
from builder.image.assemble import read_ext4
from builder.inventory.config import load_inventory
from builder.vm.boot import boot_image, host_key_options
from tests.conftest import write
from tests.extfs import Ext4
from tests.test_build import extract, partitions, pibake
from tests.vm import keyed_project, ssh, stop

HOSTS = ("node-01", "node-02")
TOKEN_TEMPLATE = "# {{ pibake_managed }}\ntoken={{ secret('web_token') }}\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """The mini project (admin key owned by the test) whose web layer declares a
    password; secrets: is host-stage only, so the role stays the cached one."""
    project, key = keyed_project(tmp_path_factory.mktemp("secrets"))
    layer = project / "layers/web/layer.yaml"
    layer.write_text(layer.read_text() + "secrets:\n  web_token: password\n")
    write(project / "layers/web/templates/etc/web/token.j2", TOKEN_TEMPLATE, 0o600)
    stderr = {}
    for host in HOSTS:
        done = pibake(project, "build", host)
        assert done.returncode == 0, done.stderr
        stderr[host] = done.stderr
    return project, key, stderr


def root_of(img: Path, dest: Path) -> Path:
    return extract(img, partitions(img)[1], dest)


@pytest.mark.integration
def test_the_first_build_creates_the_store_and_says_so(
        built: tuple[Path, Path, dict[str, str]]) -> None:
    project, _, stderr = built
    line = ("pibake: created the secrets store secrets (0700; keep it out of git and back it "
            "up: a rebuilt node needs its keys from it)")
    assert stderr["node-01"].count(line) == 1 and line not in stderr["node-02"]
    assert stat.S_IMODE((project / "secrets").stat().st_mode) == 0o700


@pytest.mark.integration
def test_each_image_carries_only_its_own_secrets(built: tuple[Path, Path, dict[str, str]],
                                                 tmp_path: Path) -> None:
    project, _, _ = built
    store = Store.at(load_inventory(project))
    keys = {h: (store.path / f"hosts/{h}/ssh_host_ed25519_key").read_bytes() for h in HOSTS}
    token = (store.path / "shared/web_token").read_text().strip()
    for host in HOSTS:
        other = next(h for h in HOSTS if h != host)
        img = project / f"output/{host}.img"
        for f in (img, *img.parent.glob(f"{host}.*")):           # it holds secrets
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        root = root_of(img, tmp_path / f"{host}.ext4")
        assert read_ext4(root, "/etc/ssh/ssh_host_ed25519_key") == keys[host] != keys[other]
        assert "Mode:  0600" in Ext4(root).debugfs("stat /etc/ssh/ssh_host_ed25519_key")
        assert read_ext4(root, "/etc/ssh/ssh_host_ed25519_key-cert.pub") == (
            store.path / f"hosts/{host}/ssh_host_ed25519_key-cert.pub").read_bytes()
        assert read_ext4(root, "/etc/machine-id").decode().strip() == machine_id(store, host)
        assert "Fast link dest: \"/etc/machine-id\"" in Ext4(root).debugfs(
            "stat /var/lib/dbus/machine-id")
        assert read_ext4(root, "/etc/web/token") == (
            f"# managed by pibake, layer web (etc/web/token.j2); local edits are lost on "
            f"rebuild\ntoken={token}\n").encode()
        assert "Mode:  0600" in Ext4(root).debugfs("stat /etc/web/token")
        # no CA outside the deployer
        assert "ssh_host_ca" not in Ext4(root).debugfs("ls /etc/pibake")
        # the manifest names the secrets and never holds a value or a hash of one
        text = (project / f"output/{host}.manifest.json").read_text()
        manifest = json.loads(text)
        assert manifest["secrets"] == ["ssh_host_ecdsa_key", "ssh_host_ed25519_key", "web_token"]
        paths = {f["path"] for f in manifest["files"]}
        assert "/etc/ssh/ssh_host_ed25519_key" not in paths and "/etc/web/token" not in paths
        assert "/etc/ssh/ssh_host_ed25519_key-cert.pub" in paths      # public: listed
        assert token not in text
        assert not re.search(r"PRIVATE KEY|" + re.escape(keys[host].decode().splitlines()[1]),
                             text)


@pytest.mark.integration
def test_a_rebuild_carries_the_same_identity(built: tuple[Path, Path, dict[str, str]],
                                             tmp_path: Path) -> None:
    project, _, _ = built
    img = project / "output/node-01.img"
    before = root_of(img, tmp_path / "before.ext4")
    again = pibake(project, "build", "node-01")
    assert again.returncode == 0, again.stderr
    assert "(role cached)" in again.stdout and "created" not in again.stderr
    after = root_of(img, tmp_path / "after.ext4")
    for path in ("/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ecdsa_key",
                 "/etc/ssh/ssh_host_ed25519_key-cert.pub", "/etc/machine-id", "/etc/web/token",
                 "/etc/ssh/ssh_known_hosts"):
        assert read_ext4(before, path) == read_ext4(after, path), path


def _ssh(port: int, key: Path, host: str, known: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-p", str(port), "-i", str(key), *host_key_options(host, known),
                           "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "admin@127.0.0.1",
                           "hostname"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.boot
def test_a_booted_node_proves_its_stored_identity(built: tuple[Path, Path, dict[str, str]],
                                                  tmp_path: Path) -> None:
    project, key, _ = built
    store = Store.at(load_inventory(project))
    known = store.path / "known_hosts"
    result = boot_image(project / "output/node-01.img", host="node-01", timeout=900, keep=True)
    port = result.ssh_port
    try:
        # strict checking against the host CA alone
        assert ssh(port, key, "hostname") == "node-01"
        # the key it presents is the one in the store
        scan = subprocess.run(["ssh-keyscan", "-p", str(port), "-t", "ed25519", "127.0.0.1"],
                              capture_output=True, text=True, timeout=60).stdout.split()
        stored = (store.path / "hosts/node-01/ssh_host_ed25519_key.pub").read_text().split()
        assert scan[1:3] == stored[:2]
        # a certificate for another name, or another CA, is refused
        wrong_name = _ssh(port, key, "node-02", known)
        assert wrong_name.returncode == 255 and "Host key verification failed" in wrong_name.stderr
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(tmp_path / "other_ca")], check=True)
        other = tmp_path / "other_known_hosts"
        other.write_text("@cert-authority node-01 " + (tmp_path / "other_ca.pub").read_text())
        refused = _ssh(port, key, "node-01", other)
        assert refused.returncode == 255 and "Host key verification failed" in refused.stderr
        # a login key the node has never seen, certified by the store's user CA
        user_key = tmp_path / "id_user"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(user_key)],
                       check=True)
        signed = pibake(project, "secrets", "sign-user", "--validity", "1h", f"{user_key}.pub")
        assert signed.returncode == 0, signed.stderr
        by_cert = _ssh(port, user_key, "node-01", known)
        assert (by_cert.returncode, by_cert.stdout.strip()) == (0, "node-01"), by_cert.stderr
    finally:
        stop(result.pid, port, key)
