"""The secrets store and the host identity built from it (no image needed)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from builder.content.hostlayer import RoleFacts
from builder.content.hostlayer import machine_id as name_machine_id
from builder.content.identity import host_identity
from builder.content.secrets import PATTERNS, Store
from builder.errors import SecretsError
from builder.inventory.config import load_inventory
from tests.conftest import write
from tests.test_config import run_cli


def identity(inv, host, facts):  # type: ignore[no-untyped-def]
    """host_identity() of the host's plan, as the host stage calls it."""
    from builder.plan import plan_hosts

    return host_identity(plan_hosts(inv, (host,))[0], facts)

FACTS = RoleFacts(passwd="admin:x:1000:1000::/home/admin:/bin/bash\n", cmdline="",
                  dhcpcd_conf="")

# node-02 gets a 'vault' layer: the CAs' private keys and two shared secrets.
VAULT_YAML = """\
description: holds the CAs and the shared secrets
requires: [base]
modes:
  /etc/vault/creds: "0600"
secrets:
  ssh_host_ca: ssh-ca
  ssh_user_ca: ssh-ca
  tls_root_ca: x509-ca
  vault_password: password
  vault_xfer: tsig
  vault_deploy_key: ssh-key
"""
VAULT_TEMPLATE = """\
# {{ pibake_managed }}
password={{ secret("vault_password") }}
tsig={{ secret("vault_xfer", "secret") }}
{{ secret("vault_xfer") }}deploy_pub={{ secret("vault_deploy_key", "public") }}
host_ca={{ secret("ssh_host_ca", "public") }}
"""


@pytest.fixture
def proj(mini: Path) -> Path:
    write(mini / "layers/vault/layer.yaml", VAULT_YAML)
    write(mini / "layers/vault/templates/etc/vault/creds.j2", VAULT_TEMPLATE)
    write(mini / "profiles/node-02.yaml", "base: debian-bookworm\nlayers: [base, web, vault]\n")
    return mini


def tree(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes()
            for p in sorted(store.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_init_makes_a_private_store_and_is_idempotent(
        proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(proj), "secrets", "init")
    store = proj / "secrets"
    assert (code, out) == (0, "secrets: 16 created, 0 already there\n")
    assert err == ("pibake: created the secrets store secrets (0700; keep it out of git and "
                   "back it up: a rebuilt node needs its keys from it)\n")
    for p in [store, *store.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    before = tree(store)
    assert "hosts/node-01/ssh_host_ed25519_key" in before
    assert "shared/vault_deploy_key.pub" in before
    code, out, err = run_cli(capsys, "-C", str(proj), "secrets", "init")
    assert (code, out, err) == (0, "secrets: 0 created, 16 already there\n", "")
    assert tree(store) == before                   # nothing replaced


def test_files_have_the_shape_of_their_kind(proj: Path) -> None:
    store = Store.at(load_inventory(proj))
    store.init()
    s = proj / "secrets"
    assert PATTERNS["tsig"][0].match((s / "shared/vault_xfer").read_text())
    assert PATTERNS["password"][0].match((s / "shared/vault_password").read_text())
    assert PATTERNS["host-secret"][0].match((s / "hosts/node-02/host_secret").read_text())
    cert_file = s / "hosts/node-01/ssh_host_ecdsa_key-cert.pub"
    cert = subprocess.run(["ssh-keygen", "-L", "-f", cert_file], capture_output=True, text=True,
                          check=True).stdout
    assert "host certificate" in cert
    assert cert.split("Principals:")[1].split()[:3] == ["node-01", "node-01.mini.lan",
                                                        "192.168.77.15"]
    ca_fp = subprocess.run(["ssh-keygen", "-l", "-f", s / "ca/ssh_host_ca.pub"],
                           capture_output=True, text=True, check=True).stdout.split()[1]
    assert f"Signing CA: ED25519 {ca_fp}" in cert
    crt = subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext", "basicConstraints",
                          "-in", s / "ca/tls_root_ca.crt"], capture_output=True, text=True,
                         check=True).stdout
    assert "CN = mini root CA" in crt and "CA:TRUE" in crt
    known = (s / "known_hosts").read_text()
    assert known == ("@cert-authority *.mini.lan,node-01,192.168.77.15,node-02,192.168.77.16 "
                     + (s / "ca/ssh_host_ca.pub").read_text())


def test_rotate_replaces_one_secret_and_names_the_images_to_rebuild(
        proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(capsys, "-C", str(proj), "secrets", "init")
    store = proj / "secrets"
    before = tree(store)
    code, out, err = run_cli(capsys, "-C", str(proj), "secrets", "rotate",
                             "node-01/ssh_host_ed25519_key")
    assert (code, err) == (0, "")
    assert out == ("secrets: renewed node-01/ssh_host_ed25519_key, "
                   "node-01/ssh_host_ed25519_key-cert; rebuild: pibake build node-01\n")
    after = tree(store)
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == ["hosts/node-01/ssh_host_ed25519_key", "hosts/node-01/ssh_host_ed25519_key"
                       "-cert.pub", "hosts/node-01/ssh_host_ed25519_key.pub"]

    code, out, _ = run_cli(capsys, "-C", str(proj), "secrets", "rotate", "ssh_host_ca")
    assert out.endswith("; rebuild: pibake build node-01 node-02\n")
    again = tree(store)
    changed = sorted(k for k in after if after[k] != again[k])
    # a new CA: every certificate re-signed, no host key touched
    assert changed == ["ca/ssh_host_ca", "ca/ssh_host_ca.pub", "hosts/node-01/ssh_host_ecdsa_key"
                       "-cert.pub", "hosts/node-01/ssh_host_ed25519_key-cert.pub",
                       "hosts/node-02/ssh_host_ecdsa_key-cert.pub",
                       "hosts/node-02/ssh_host_ed25519_key-cert.pub", "known_hosts"]

    code, out, err = run_cli(capsys, "-C", str(proj), "secrets", "rotate", "vault_pasword")
    assert (code, out) == (7, "")
    assert err == ("pibake: error: vault_pasword: no such secret in the inventory; see pibake "
                   "secrets list; did you mean 'vault_password'?\n")


def test_list_shows_names_kinds_and_holders_never_values(
        proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(capsys, "-C", str(proj), "secrets", "init")
    code, out, err = run_cli(capsys, "-C", str(proj), "secrets", "list")
    assert (code, err) == (0, "")
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert rows["ssh_host_ca"].endswith("private: node-02; public: every host")
    assert rows["vault_xfer"].split()[1] == "tsig"
    assert rows["vault_xfer"].endswith("  node-02")
    assert rows["node-01/host_secret"].endswith("  node-01")
    for value in tree(proj / "secrets").values():
        for line in value.decode().splitlines():
            if len(line) > 20:
                assert line not in out


def _store_cases() -> list[tuple[str, str, str]]:
    return [
        ("open-folder", "chmod 755 secrets",
         "secrets: mode 0755 lets other users into the cluster's secrets; run: chmod 700 secrets"),
        ("open-file", "chmod 644 secrets/hosts/node-01/host_secret",
         "secrets/hosts/node-01/host_secret: mode 0644 lets other users read a secret; run: "
         "chmod 600 secrets/hosts/node-01/host_secret"),
        ("open-subfolder", "chmod 711 secrets/ca",
         "secrets/ca: mode 0711 lets other users read a secret; run: chmod 700 secrets/ca"),
        ("not-a-folder", "rm -rf secrets && touch secrets",
         "secrets: not a folder; the secrets store is a folder (move the file away, or set "
         "PIBAKE_SECRETS)"),
        ("bad-key", "echo garbage > secrets/hosts/node-01/ssh_host_ed25519_key",
         "secrets/hosts/node-01/ssh_host_ed25519_key: not an OpenSSH private key; restore it "
         "from a backup or run: pibake secrets rotate node-01/ssh_host_ed25519_key"),
        ("bad-tsig", "echo 'key x;' > secrets/shared/vault_xfer",
         "secrets/shared/vault_xfer: not a TSIG key (tsig-keygen); restore it from a backup or "
         "run: pibake secrets rotate vault_xfer"),
        ("lost-pub", "rm secrets/hosts/node-01/ssh_host_ecdsa_key.pub",
         "secrets/hosts/node-01/ssh_host_ecdsa_key.pub: missing although "
         "secrets/hosts/node-01/ssh_host_ecdsa_key exists; restore it from a backup or run: "
         "pibake secrets rotate node-01/ssh_host_ecdsa_key"),
    ]


@pytest.mark.parametrize("case", _store_cases(), ids=[c[0] for c in _store_cases()])
def test_a_bad_store_is_one_line_and_exit_7(proj: Path, capsys: pytest.CaptureFixture[str],
                                            case: tuple[str, str, str]) -> None:
    _, damage, expected = case
    Store.at(load_inventory(proj)).init()
    subprocess.run(["sh", "-c", damage], cwd=proj, check=True)
    before = tree(proj / "secrets") if (proj / "secrets").is_dir() else {}
    capsys.readouterr()
    code, out, err = run_cli(capsys, "-C", str(proj), "secrets", "init")
    assert (code, out, err) == (7, "", f"pibake: error: {expected}\n")
    errors = set()
    for host in ("node-01", "node-02"):
        try:
            identity(load_inventory(proj), host, FACTS)
        except SecretsError as exc:
            errors.add(str(exc))
    assert expected in errors                  # a build of the host that needs it stops alike
    if before:
        assert tree(proj / "secrets") == before         # nothing written or "repaired"


def test_an_interrupted_init_leaves_nothing_half_written(
        proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.at(load_inventory(proj))

    def interrupted(self: Store, d: Path) -> None:
        (d / "tls_root_ca.crt").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "_x509_ca", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.init()
    s = proj / "secrets"
    assert not (s / "ca/tls_root_ca.crt").exists() and not list(s.glob(".tmp-*"))
    # a write cut between an item's files: the marking file (written last) is absent
    (s / "hosts").mkdir(mode=0o700)
    (s / "hosts/node-01").mkdir(mode=0o700)
    (s / "hosts/node-01/ssh_host_ed25519_key.pub").write_text("half\n")
    os.chmod(s / "hosts/node-01/ssh_host_ed25519_key.pub", 0o600)
    monkeypatch.undo()
    monkeypatch.delenv("PIBAKE_SECRETS", raising=False)
    store = Store.at(load_inventory(proj))
    created = store.init()
    assert "node-01/ssh_host_ed25519_key" in created and "tls_root_ca" in created
    assert PATTERNS["ssh-public"][0].match((s / "hosts/node-01/ssh_host_ed25519_key.pub")
                                           .read_text())


def test_store_location_env_then_cluster_yaml(proj: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = proj / "profiles/cluster.yaml"
    cluster.write_text(cluster.read_text().replace("  domain: mini.lan\n",
                                                   "  domain: mini.lan\n  secrets_dir: ../vault\n"))
    store = Store.at(load_inventory(proj))
    assert (store.path, store.shown) == (proj / "../vault", "../vault")
    monkeypatch.setenv("PIBAKE_SECRETS", str(tmp_path / "elsewhere"))
    store = Store.at(load_inventory(proj))
    store.init()
    assert (tmp_path / "elsewhere/known_hosts").is_file() and not (proj / "secrets").exists()


def test_check_and_render_use_stand_ins_and_need_no_store(
        proj: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(proj), "check")
    assert (code, err) == (0, "")
    code, out, err = run_cli(capsys, "-C", str(proj), "render", "node-02", "--to",
                             str(tmp_path / "r"))
    assert (code, err) == (0, "")
    creds = (tmp_path / "r/etc/vault/creds").read_text()
    assert "password=stand-in-vault_password\n" in creds
    assert 'key "vault-xfer" {\n\talgorithm hmac-sha256;\n' in creds
    assert "deploy_pub=ssh-ed25519 AAAAstand-in vault_deploy_key\n" in creds
    assert not (proj / "secrets").exists()
    assert not list((tmp_path / "r").rglob("ssh_host_*_key"))


@pytest.mark.parametrize("case", [
    ("undeclared", 'x={{ secret("web_token") }}\n',
     "layers/web/templates/etc/web/page.txt.j2: secret('web_token'): layer web does not declare "
     "it; add 'web_token: password|tsig|ssh-key' under secrets: in layers/web/layer.yaml"),
    ("ca-private", 'x={{ secret("ssh_user_ca") }}\n',
     "layers/web/templates/etc/web/page.txt.j2: secret('ssh_user_ca'): layer web does not "
     "declare it; add 'ssh_user_ca: password|tsig|ssh-key' under secrets: in "
     "layers/web/layer.yaml"),
    ("bad-part", 'x={{ secret("ssh_user_ca", "private") }}\n',
     "layers/web/templates/etc/web/page.txt.j2: secret('ssh_user_ca', 'private'): a ssh-ca has "
     "no part 'private' (known: value, public)"),
], ids=lambda c: c[0])
def test_a_template_reads_only_what_its_layer_declares(
        proj: Path, capsys: pytest.CaptureFixture[str], case: tuple[str, str, str]) -> None:
    _, line, expected = case
    page = proj / "layers/web/templates/etc/web/page.txt.j2"
    page.write_text(page.read_text() + line)
    code, out, err = run_cli(capsys, "-C", str(proj), "check")
    assert (code, out, err) == (2, "", f"pibake: error: {expected}\n")


def test_a_world_readable_template_may_not_read_a_secret(
        proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yaml = proj / "layers/vault/layer.yaml"
    yaml.write_text(yaml.read_text().replace('"0600"', '"0644"'))
    code, out, err = run_cli(capsys, "-C", str(proj), "check")
    assert (code, out) == (2, "")
    assert err == ("pibake: error: layers/vault/templates/etc/vault/creds.j2: reads secret "
                   "'vault_password' but would be readable by every user (0644); set modes: "
                   '{/etc/vault/creds: "0600"} in layers/vault/layer.yaml\n')


@pytest.mark.parametrize("case", [
    ("bad-kind", "  vault_xfer: tsgi\n",
     "layers/vault/layer.yaml: secrets.vault_xfer: 'tsgi' is not a secret kind (known: password, "
     "ssh-ca, ssh-key, tsig, x509-ca); did you mean 'tsig'?"),
    ("ca-kind-elsewhere", "  vault_xfer: ssh-ca\n",
     "layers/vault/layer.yaml: secrets.vault_xfer: 'ssh-ca' is only for the cluster's CAs "
     "(ssh_host_ca: ssh-ca, ssh_user_ca: ssh-ca, tls_root_ca: x509-ca); use password, tsig or "
     "ssh-key"),
    ("bad-name", "  Vault-Xfer: tsig\n",
     "layers/vault/layer.yaml: secrets.Vault-Xfer: secret names are lower-case letters, digits "
     "and '_'"),
], ids=lambda c: c[0])
def test_bad_secret_declarations(proj: Path, capsys: pytest.CaptureFixture[str],
                                 case: tuple[str, str, str]) -> None:
    _, line, expected = case
    yaml = proj / "layers/vault/layer.yaml"
    yaml.write_text(yaml.read_text().replace("  vault_xfer: tsig\n", line))
    code, out, err = run_cli(capsys, "-C", str(proj), "check")
    assert (code, out, err) == (2, "", f"pibake: error: {expected}\n")


def _files(delta_root: tuple) -> dict[str, bytes]:  # type: ignore[type-arg]
    return {e.path: e.data for e in delta_root if e.kind == "file"}


def test_each_host_gets_only_its_own_identity_and_its_layers_secrets(
        proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = load_inventory(proj)
    d1, names1, private1 = identity(inv, "node-01", FACTS)
    d2, names2, private2 = identity(inv, "node-02", FACTS)
    s = proj / "secrets"
    f1, f2 = _files(d1.root), _files(d2.root)
    own = (s / "hosts/node-01/ssh_host_ed25519_key").read_bytes()
    assert f1["/etc/ssh/ssh_host_ed25519_key"] == own
    assert f2["/etc/ssh/ssh_host_ed25519_key"] == (s / "hosts/node-02/ssh_host_ed25519_key"
                                                   ).read_bytes()
    every_secret = [v for k, v in tree(s).items() if not k.endswith((".pub", ".crt"))
                    and k != "known_hosts"]
    # node-01: its own host keys and nothing else secret from the store
    assert sorted(v for v in every_secret if any(v in data for data in f1.values())) == sorted(
        (s / f"hosts/node-01/ssh_host_{t}_key").read_bytes() for t in ("ed25519", "ecdsa"))
    assert names1 == ["ssh_host_ecdsa_key", "ssh_host_ed25519_key"]
    # vault_deploy_key: its templates read only the public half, so it is not carried
    assert names2 == ["ssh_host_ca", "ssh_host_ecdsa_key", "ssh_host_ed25519_key", "ssh_user_ca",
                      "tls_root_ca", "vault_password", "vault_xfer"]
    assert f2["/etc/pibake/ca/ssh_host_ca"] == (s / "ca/ssh_host_ca").read_bytes()
    assert not any(p.startswith("/etc/pibake/ca") for p in f1)
    modes = {e.path: e.mode for e in d2.root}
    assert modes["/etc/pibake/ca"] == 0o700 and modes["/etc/pibake/ca/ssh_host_ca"] == 0o400
    assert modes["/etc/ssh/ssh_host_ed25519_key"] == 0o600
    assert private2 >= {"/etc/vault/creds", "/etc/pibake/ca/ssh_host_ca",
                        "/etc/ssh/ssh_host_ed25519_key"}
    creds = f2["/etc/vault/creds"].decode()
    assert f"password={(s / 'shared/vault_password').read_text().strip()}\n" in creds
    # every node trusts the host CA and the user CA; certificates are configured
    for f in (f1, f2):
        assert f["/etc/ssh/ssh_known_hosts"].endswith((s / "known_hosts").read_bytes())
        assert f["/etc/ssh/pibake_user_ca.pub"] == (s / "ca/ssh_user_ca.pub").read_bytes()
        conf = f["/etc/ssh/sshd_config.d/20-pibake-identity.conf"].decode()
        assert "HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub\n" in conf
        assert "TrustedUserCAKeys /etc/ssh/pibake_user_ca.pub\n" in conf


def test_machine_id_comes_from_the_host_secret(proj: Path) -> None:
    inv = load_inventory(proj)
    ids = {}
    for host in ("node-01", "node-02"):
        delta, _, _ = identity(inv, host, FACTS)
        ids[host] = _files(delta.root)["/etc/machine-id"].decode().strip()
        again, _, _ = identity(load_inventory(proj), host, FACTS)
        assert _files(again.root)["/etc/machine-id"].decode().strip() == ids[host]  # stable
        assert ids[host] != name_machine_id("mini", host)       # not derivable from names
        assert len(ids[host]) == 32 and ids[host][12] == "4"
    assert ids["node-01"] != ids["node-02"]
    links = {e.path: e.target for e in delta.root if e.kind == "symlink"}
    assert links["/var/lib/dbus/machine-id"] == "/etc/machine-id"   # not dbus's role-wide copy
    Store.at(inv).rotate("node-01/host_secret")
    delta, _, _ = identity(load_inventory(proj), "node-01", FACTS)
    assert _files(delta.root)["/etc/machine-id"].decode().strip() != ids["node-01"]


def test_a_template_with_a_secret_may_not_go_to_the_boot_partition(
        proj: Path) -> None:
    write(proj / "layers/vault/templates/boot/firmware/creds.txt.j2", VAULT_TEMPLATE)
    yaml = proj / "layers/vault/layer.yaml"
    yaml.write_text(yaml.read_text().replace('modes:\n', 'modes:\n  /boot/firmware/creds.txt: '
                                             '"0600"\n'))
    with pytest.raises(Exception) as caught:
        identity(load_inventory(proj), "node-02", FACTS)
    assert str(caught.value) == (
        "layers/vault/templates/boot/firmware/creds.txt.j2: reads secret 'vault_password' but "
        "goes to the boot partition (FAT: readable by anyone with the card); move it under /etc")


def test_ssh_config_prints_the_ca_line_and_a_strict_block(
        proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(capsys, "-C", str(proj), "secrets", "init")
    code, out, err = run_cli(capsys, "-C", str(proj), "ssh-config")
    assert (code, err) == (0, "")
    assert (proj / "secrets/known_hosts").read_text() in out
    assert ("Host node-02 node-02.mini.lan\n    HostName 192.168.77.16\n    User admin\n"
            "    HostKeyAlias node-02\n    StrictHostKeyChecking yes\n") in out
    assert os.environ.get("PIBAKE_SECRETS") is None


def test_declaring_secrets_never_rebuilds_a_role(proj: Path) -> None:
    """secrets: is read in the host stage only: the layer's build hash (hence
    the role cache key) is the same with or without it."""
    from builder.inventory.layers import load_layer

    with_secrets = load_layer(proj / "layers/vault", "layers/vault")
    yaml = proj / "layers/vault/layer.yaml"
    yaml.write_text(yaml.read_text().split("secrets:")[0])
    without = load_layer(proj / "layers/vault", "layers/vault")
    assert with_secrets.build_hash == without.build_hash
    assert with_secrets.content_hash != without.content_hash
    yaml.write_text(yaml.read_text().replace('"0600"', '"0640"'))          # modes: still counts
    assert load_layer(proj / "layers/vault", "layers/vault").build_hash != without.build_hash


def test_a_new_address_gets_a_new_certificate_for_the_same_key(
        proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Store.at(load_inventory(proj)).init()
    s = proj / "secrets/hosts/node-01"
    key, cert = (s / "ssh_host_ed25519_key").read_bytes(), (s / "ssh_host_ed25519_key-cert.pub")
    old_cert = cert.read_bytes()
    cluster = proj / "profiles/cluster.yaml"
    cluster.write_text(cluster.read_text().replace("192.168.77.15", "192.168.77.25"))
    capsys.readouterr()
    identity(load_inventory(proj), "node-01", FACTS)
    assert (s / "ssh_host_ed25519_key").read_bytes() == key and cert.read_bytes() != old_cert
    listed = subprocess.run(["ssh-keygen", "-L", "-f", cert], capture_output=True, text=True,
                            check=True).stdout
    assert listed.split("Principals:")[1].split()[:3] == ["node-01", "node-01.mini.lan",
                                                         "192.168.77.25"]
    assert ("pibake: secrets/hosts/node-01/ssh_host_ed25519_key-cert.pub: re-signed for "
            "node-01's current names (node-01, node-01.mini.lan, 192.168.77.25); rebuild "
            "node-01\n") in capsys.readouterr().err
    assert "192.168.77.25" in (proj / "secrets/known_hosts").read_text()


def test_sign_user_certifies_a_login_key_with_the_user_ca(
        proj: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ssh_dir = tmp_path / "laptop"
    ssh_dir.mkdir()
    key = ssh_dir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f",
                    str(key)], check=True)
    code, out, err = run_cli(capsys, "-C", str(proj), "secrets", "sign-user", f"{key}.pub")
    cert = ssh_dir / "id_ed25519-cert.pub"           # beside the key: where ssh looks
    assert code == 0, err
    assert out.startswith(f"{cert}: logs in as admin on every node of mini; Valid: from ")
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True,
                           text=True, check=True).stdout
    ca = subprocess.run(["ssh-keygen", "-l", "-f", str(proj / "secrets/ca/ssh_user_ca.pub")],
                        capture_output=True, text=True, check=True).stdout.split()[1]
    assert "user certificate" in shown and f"Signing CA: ED25519 {ca}" in shown
    assert "Principals: \n                admin\n" in shown
    assert 'Key ID: "mini:admin:me@laptop"' in shown
    # the CA private key stays in the store; only the certificate is written outside it
    assert sorted(p.name for p in ssh_dir.iterdir()) == [
        "id_ed25519", "id_ed25519-cert.pub", "id_ed25519.pub"]
    code, out, err = run_cli(capsys, "-C", str(proj), "secrets", "sign-user", "--principal",
                             "ops", "--validity", "forever", f"{key}.pub")
    assert (code, err) == (0, "") and out.endswith("logs in as ops on every node of mini; "
                                                   "Valid: forever\n")


@pytest.mark.parametrize(("name", "content", "option", "expected"), [
    ("id_ed25519", "KEY", None,
     "{p}: not a public key file (*.pub); name the .pub file, never the private key"),
    ("nope.pub", None, None,
     "{p}: no such file; name your SSH public key (e.g. ~/.ssh/id_ed25519.pub)"),
    ("junk.pub", "junk\n", None,
     "{p}: not an SSH public key; name the .pub file ssh-keygen wrote beside your private key"),
    ("id_ed25519.pub", "KEY.pub", "3years",
     "--validity '3years': expected a duration such as 52w, 30d or 12h, or forever"),
])
def test_sign_user_bad_input_is_one_line_and_exit_7(
        proj: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
        content: str | None, option: str | None, expected: str) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    path = tmp_path / name
    if content not in (None, "KEY", "KEY.pub"):
        path.write_text(str(content))
    args = ["--validity", option] if option else []
    code, out, err = run_cli(capsys, "-C", str(proj), "secrets", "sign-user", *args, str(path))
    assert (code, out, err) == (7, "", f"pibake: error: {expected.format(p=path)}\n")
    assert not list(tmp_path.glob("*-cert.pub"))
