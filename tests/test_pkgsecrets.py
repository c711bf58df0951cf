"""Package-generated secrets: the role stage removes them from a role tree and
records them; the host stage installs the unit that makes each node's own."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from builder.content.hostlayer import (
    PACKAGE_SECRETS_SCRIPT,
    PACKAGE_SECRETS_UNIT,
    RoleFacts,
    host_delta,
    package_secret_entries,
    standin_facts,
)
from builder.emulate.pkgsecrets import (
    PACKAGE_SECRETS,
    Removed,
    RemovedFile,
    removed_from_meta,
    strip_package_secrets,
)
from builder.inventory.config import load_inventory
from builder.plan import ROLE_CODE, plan_hosts

SNAKEOIL_PEM = "/etc/ssl/certs/ssl-cert-snakeoil.pem"


def put(tree: Path, path: str, text: str = "secret\n", mode: int = 0o600,
        owner: tuple[int, int] = (0, 0)) -> Path:
    dest = tree / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    os.chown(dest, *owner)
    dest.chmod(mode)
    return dest


def link(tree: Path, path: str, target: str) -> Path:
    dest = tree / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(target)
    return dest


@pytest.fixture
def role_tree(tmp_path: Path) -> Path:
    """A role tree as bind9, ssl-cert, systemd, dbus and ca-certificates leave it."""
    tree = tmp_path / "root"
    put(tree, "/etc/bind/rndc.key", mode=0o640, owner=(101, 102))
    put(tree, "/etc/bind/named.conf", "include x;\n", 0o644)
    put(tree, "/etc/ssl/private/ssl-cert-snakeoil.key", mode=0o640, owner=(0, 110))
    put(tree, SNAKEOIL_PEM, "cert\n", 0o644)
    link(tree, "/etc/ssl/certs/0a1b2c3d.0", "ssl-cert-snakeoil.pem")
    link(tree, "/etc/ssl/certs/9f8e7d6c.0", "ISRG_Root_X1.pem")   # a CA's hash link stays
    put(tree, "/etc/ssh/ssh_host_ed25519_key")
    put(tree, "/etc/ssh/ssh_host_ed25519_key.pub", "pub\n", 0o644)
    put(tree, "/etc/ssh/sshd_config", "Port 22\n", 0o644)
    put(tree, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n", 0o444)
    link(tree, "/var/lib/dbus/machine-id", "/etc/machine-id")       # Debian's link stays
    put(tree, "/var/lib/systemd/random-seed", mode=0o600)
    return tree


def files_of(tree: Path) -> set[str]:
    return {"/" + p.relative_to(tree).as_posix() for p in tree.rglob("*")
            if p.is_file() or p.is_symlink()}


def test_the_role_keeps_none_of_them(role_tree: Path) -> None:
    removed = strip_package_secrets(role_tree)
    assert [r.name for r in removed] == ["rndc-key", "ssl-cert-snakeoil", "ssh-host-keys",
                                         "machine-id", "random-seed"]
    assert files_of(role_tree) == {"/etc/bind/named.conf", "/etc/ssl/certs/9f8e7d6c.0",
                                   "/etc/ssh/sshd_config", "/etc/machine-id",
                                   "/var/lib/dbus/machine-id"}
    assert (role_tree / "etc/machine-id").read_text() == "uninitialized\n"
    assert (role_tree / "etc/machine-id").stat().st_mode & 0o7777 == 0o444


def test_what_was_removed_keeps_the_packages_owners_and_modes(role_tree: Path) -> None:
    removed = {r.name: r for r in strip_package_secrets(role_tree)}
    assert removed["rndc-key"].files == (
        RemovedFile("/etc/bind/rndc.key", "file", 101, 102, 0o640),)
    assert removed["ssl-cert-snakeoil"].files == (
        RemovedFile("/etc/ssl/certs/0a1b2c3d.0", "symlink", 0, 0, 0o777),
        RemovedFile(SNAKEOIL_PEM, "file", 0, 0, 0o644),
        RemovedFile("/etc/ssl/private/ssl-cert-snakeoil.key", "file", 0, 110, 0o640))


def test_meta_json_round_trip(role_tree: Path) -> None:
    removed = strip_package_secrets(role_tree)
    meta = json.loads(json.dumps([r.as_json() for r in removed]))
    assert removed_from_meta(meta) == removed
    # a name this code no longer knows has nothing to make again
    assert removed_from_meta([{"name": "gone", "files": []}]) == ()


def test_a_dbus_machine_id_file_goes(tmp_path: Path) -> None:
    put(tmp_path, "/var/lib/dbus/machine-id", "0123\n", 0o444)
    assert [r.name for r in strip_package_secrets(tmp_path)] == ["dbus-machine-id"]
    assert not (tmp_path / "var/lib/dbus/machine-id").exists()


def test_a_tree_without_them_is_left_alone(tmp_path: Path) -> None:
    put(tmp_path, "/etc/hostname", "x\n", 0o644)
    assert strip_package_secrets(tmp_path) == ()
    assert files_of(tmp_path) == {"/etc/hostname"}


def test_nothing_outside_the_tree_is_touched(tmp_path: Path) -> None:
    """A folder of the role that is a symlink out of it (absolute, as in the
    image) is not followed to the build host's files."""
    outside = put(tmp_path / "host", "/bind/rndc.key")
    tree = tmp_path / "root"
    link(tree, "/etc/bind", str(outside.parent))
    assert strip_package_secrets(tree) == ()
    assert outside.exists()


def test_the_table_names_are_unique_and_paths_absolute() -> None:
    names = [s.name for s in PACKAGE_SECRETS]
    assert len(names) == len(set(names))
    assert all(p.startswith("/") for s in PACKAGE_SECRETS for p in s.paths)
    # a secret that a tool makes again names the units that must wait for it
    assert all(s.before for s in PACKAGE_SECRETS if s.regenerate)


def test_the_table_is_in_the_role_key() -> None:
    assert any(p.name == "pkgsecrets.py" for p in ROLE_CODE)


def facts_with(removed: tuple[Removed, ...]) -> RoleFacts:
    return RoleFacts(passwd="", cmdline="", dhcpcd_conf="", package_secrets=removed)


def entries(removed: tuple[Removed, ...]) -> dict[str, str]:
    return {e.path: e.data.decode() if e.kind == "file" else f"-> {e.target}"
            for e in package_secret_entries(facts_with(removed))}


def test_the_unit_makes_only_what_the_role_had(role_tree: Path) -> None:
    removed = tuple(r for r in strip_package_secrets(role_tree) if r.name != "ssl-cert-snakeoil")
    files = entries(removed)
    unit = f"/etc/systemd/system/{PACKAGE_SECRETS_UNIT}"
    assert files[f"/etc/systemd/system/multi-user.target.wants/{PACKAGE_SECRETS_UNIT}"] == \
        f"-> {unit}"
    assert "Before=bind9.service named.service\n" in files[unit]
    script = files[PACKAGE_SECRETS_SCRIPT]
    assert "rndc-confgen -a" in script and "make-ssl-cert" not in script
    assert 'chown 101:102 "$ROOT/etc/bind/rndc.key"' in script
    assert 'chmod 0640 "$ROOT/etc/bind/rndc.key"' in script


def test_no_unit_when_nothing_needs_a_tool(role_tree: Path) -> None:
    """SSH host keys come from the secrets store, machine-id from the host
    stage, the random seed from systemd itself: no unit for those."""
    removed = tuple(r for r in strip_package_secrets(role_tree)
                    if r.name not in ("rndc-key", "ssl-cert-snakeoil"))
    assert removed and entries(removed) == {}
    assert entries(()) == {}


def test_planning_without_a_role_writes_no_unit(mini: Path) -> None:
    plan = plan_hosts(load_inventory(mini), ("node-01",))[0]
    paths = {e.path for e in host_delta(plan, standin_facts(plan)).root}
    assert PACKAGE_SECRETS_SCRIPT not in paths


STUBS = {
    # the packages' tools, writing under $PIBAKE_FIRSTBOOT_ROOT, and a log of calls
    "rndc-confgen": 'echo "rndc-confgen $*" >> "$LOG"\n'
                    'echo key > "$PIBAKE_FIRSTBOOT_ROOT/etc/bind/rndc.key"\n',
    "make-ssl-cert": 'echo "make-ssl-cert $*" >> "$LOG"\n'
                     'echo key > "$PIBAKE_FIRSTBOOT_ROOT/etc/ssl/private/ssl-cert-snakeoil.key"\n'
                     'echo pem > "$PIBAKE_FIRSTBOOT_ROOT/etc/ssl/certs/ssl-cert-snakeoil.pem"\n',
    "chown": 'echo "chown $*" >> "$LOG"\n',
    "chmod": 'echo "chmod $*" >> "$LOG"\n',
}


def run_script(script: str, root: Path, tmp_path: Path) -> tuple[str, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in STUBS.items():
        put(bin_dir, name, "#!/bin/sh\n" + body, 0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    (tmp_path / "script").write_text(script)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log),
           "PIBAKE_FIRSTBOOT_ROOT": str(root)}
    done = subprocess.run(["sh", str(tmp_path / "script")], env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip(), [line.replace(str(root), "") for line in
                                 log.read_text().splitlines()]


def test_the_script_makes_each_once_with_the_packages_owners(role_tree: Path,
                                                             tmp_path: Path) -> None:
    removed = strip_package_secrets(role_tree)
    script = entries(removed)[PACKAGE_SECRETS_SCRIPT]
    out, calls = run_script(script, role_tree, tmp_path)
    assert out == "package-secrets: made rndc-key ssl-cert-snakeoil"
    assert calls == [
        "rndc-confgen -a",
        "chown 101:102 /etc/bind/rndc.key", "chmod 0640 /etc/bind/rndc.key",
        "make-ssl-cert generate-default-snakeoil --force-overwrite",
        f"chown 0:0 {SNAKEOIL_PEM}", f"chmod 0644 {SNAKEOIL_PEM}",
        "chown 0:110 /etc/ssl/private/ssl-cert-snakeoil.key",
        "chmod 0640 /etc/ssl/private/ssl-cert-snakeoil.key"]
    # every boot runs it: a second run changes nothing
    assert run_script(script, role_tree, tmp_path) == (
        "package-secrets: all present; nothing to do", [])
    # one half of the pair lost: the pair is made again
    (role_tree / "etc/ssl/private/ssl-cert-snakeoil.key").unlink()
    out, calls = run_script(script, role_tree, tmp_path)
    assert out == "package-secrets: made ssl-cert-snakeoil"
    assert calls[0] == "make-ssl-cert generate-default-snakeoil --force-overwrite"
