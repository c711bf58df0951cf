"""Package-generated secrets in real images: two hosts of one role with bind9
and ssl-cert. The cached role holds neither the rndc key nor the snakeoil pair
(the packages made them in the chroot), and each node makes its own on first
boot, with the packages' owners and modes, before named starts.

The hosts name no base, so they get the default one, debian-trixie (arm64),
built with --strict (no security suite skipped): this is CI's proof that the
default base builds, boots to a running system and serves a role."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builder.content.hostlayer import PACKAGE_SECRETS_SCRIPT, PACKAGE_SECRETS_UNIT
from builder.inventory.config import load_inventory
from builder.plan import plan_hosts
from builder.vm.boot import boot_image
from tests.conftest import write
from tests.extfs import Ext4
from tests.vm import build, keyed_project, ssh, stop

HOSTS = ("node-01", "node-02")
RNDC_KEY = "/etc/bind/rndc.key"
SNAKEOIL_KEY = "/etc/ssl/private/ssl-cert-snakeoil.key"
SNAKEOIL_PEM = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
SECRETS = (RNDC_KEY, SNAKEOIL_KEY, SNAKEOIL_PEM)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The mini project's two nodes on one role: base + a 'dns' layer whose
    packages make secrets at install time. One role build for both."""
    project, key = keyed_project(tmp_path_factory.mktemp("pkgsecrets"))
    write(project / "layers/dns/layer.yaml",
          "description: BIND and the snakeoil pair\nrequires: [base]\n")
    write(project / "layers/dns/packages", "bind9\nssl-cert\n")
    for host in HOSTS:
        # no base: -> cluster.base, whose default is debian-trixie
        write(project / f"profiles/{host}.yaml", "layers: [base, dns]\n")
    build(project, *HOSTS, strict=True)
    return project, key


@pytest.mark.integration
def test_the_role_cache_holds_none_of_them(built: tuple[Path, Path]) -> None:
    project, _ = built
    plan = plan_hosts(load_inventory(project), [HOSTS[0]])[0]
    meta = json.loads((plan.role_dir / "meta.json").read_text())
    recorded = {r["name"]: {f["path"]: f for f in r["files"]} for r in meta["package_secrets"]}
    assert {"rndc-key", "ssl-cert-snakeoil", "machine-id"} <= set(recorded), recorded
    # the owners and modes the packages gave them, for the first boot to give again
    rndc = recorded["rndc-key"][RNDC_KEY]
    assert (rndc["kind"], rndc["mode"]) == ("file", 0o640)
    key = recorded["ssl-cert-snakeoil"][SNAKEOIL_KEY]
    assert (key["uid"], key["mode"]) == (0, 0o640)
    links = [p for p, f in recorded["ssl-cert-snakeoil"].items() if f["kind"] == "symlink"]
    hash_link = re.compile(r"/etc/ssl/certs/[0-9a-f]{8}\.[0-9]+")
    assert links and all(hash_link.fullmatch(p) for p in links), links
    root = Ext4(plan.role_dir / "root.ext4")
    assert "rndc.key" not in root.names("/etc/bind")
    assert "named.conf" in root.names("/etc/bind")
    assert "ssl-cert-snakeoil.key" not in root.names("/etc/ssl/private")
    certs = root.names("/etc/ssl/certs")
    assert "ssl-cert-snakeoil.pem" not in certs
    assert not {p.rsplit("/", 1)[1] for p in links} & set(certs)
    assert root.read("/etc/machine-id") == "uninitialized\n"


@pytest.mark.integration
def test_the_default_base_is_trixie_with_its_security_suite(built: tuple[Path, Path]) -> None:
    project, _ = built
    manifest = json.loads((project / "output/node-01.manifest.json").read_text())
    assert manifest["base"]["name"] == "debian-trixie"
    assert manifest["base"]["suite"] == "trixie"
    assert manifest["base"]["suites"][0] == "trixie"
    assert manifest["base"]["skipped_suites"] == []       # --strict: none may be skipped
    assert manifest["packages"]["linux-image-arm64"]
    assert manifest["packages"]["libc6"].split("+")[0].startswith("2.41")
    assert manifest["packages"]["bind9"]


@pytest.mark.integration
def test_each_image_carries_the_unit_not_the_secrets(built: tuple[Path, Path]) -> None:
    project, _ = built
    scripts = []
    for host in HOSTS:
        img = project / f"output/{host}.img"
        root = Ext4.image_root(img)
        assert "rndc.key" not in root.names("/etc/bind")
        assert "ssl-cert-snakeoil.key" not in root.names("/etc/ssl/private")
        assert PACKAGE_SECRETS_UNIT in root.names(
            "/etc/systemd/system/multi-user.target.wants")
        unit = root.read(f"/etc/systemd/system/{PACKAGE_SECRETS_UNIT}")
        assert "named.service" in unit and "nginx.service" in unit
        scripts.append(root.read(PACKAGE_SECRETS_SCRIPT))
    assert "rndc-confgen -a" in scripts[0] and "make-ssl-cert" in scripts[0]
    assert scripts[0] == scripts[1]


STATE = (f"sudo sha256sum {' '.join(SECRETS)} | cut -d' ' -f1; "
         f"sudo stat -c '%U:%G %a' {' '.join(SECRETS)}; "
         f"sudo openssl x509 -noout -subject -in {SNAKEOIL_PEM}; "
         f"readlink /etc/ssl/certs/$(openssl x509 -hash -noout -in {SNAKEOIL_PEM}).0")


@pytest.mark.boot
@pytest.mark.integration
def test_first_boot_makes_each_nodes_own(built: tuple[Path, Path]) -> None:
    project, key = built
    state: dict[str, list[str]] = {}
    for host in HOSTS:
        result = boot_image(project / f"output/{host}.img", host=host, timeout=900, keep=True)
        port = result.ssh_port
        try:
            # --wait: the first-boot runner may be done before named has started
            assert ssh(port, key, "sudo systemctl is-system-running --wait", host) == "running"
            assert ssh(port, key, "cut -d. -f1 /etc/debian_version", host) == "13"
            assert ssh(port, key, "systemctl is-active named.service "
                       f"{PACKAGE_SECRETS_UNIT}", host).split() == ["active", "active"]
            lines = ssh(port, key, STATE, host).splitlines()
            assert len(lines) == 8, lines
            assert lines[3:6] == ["bind:bind 640", "root:ssl-cert 640", "root:root 644"], lines
            # "subject=CN = x" (OpenSSL 3.0) or "subject=CN=x" (3.5, trixie)
            assert f"CN={host}.mini.lan" in lines[6].replace(" ", ""), lines
            assert lines[7] == "ssl-cert-snakeoil.pem", lines
            # named read this node's key: rndc talks to it
            assert ssh(port, key, "sudo rndc status >/dev/null && echo ok", host) == "ok"
            assert PACKAGE_SECRETS_UNIT in ssh(
                port, key, "systemctl list-dependencies --after --plain named.service", host)
            # idempotent: a second run keeps every file
            again = ssh(port, key, f"sudo {PACKAGE_SECRETS_SCRIPT}", host)
            assert again == "package-secrets: all present; nothing to do"
            assert ssh(port, key, STATE, host).splitlines() == lines
            state[host] = lines
        finally:
            stop(result.pid, port, key, host)
    one, two = (state[h] for h in HOSTS)
    for i, path in enumerate(SECRETS):
        assert one[i] != two[i], f"{path} is the same on both nodes"
