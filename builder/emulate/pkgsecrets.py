"""Secrets that packages generate while they install, kept out of shared roles.

A role is built once in an emulated chroot and copied into every host of it,
so whatever a maintainer script made from randomness there (BIND's rndc key,
ssl-cert's snakeoil key) would be byte-identical on every node of the role.
The role stage removes these files (``strip_package_secrets``) and records in
the role's meta.json which ones it removed, with their owners and modes; the
host stage installs a unit that makes them again on the node's first boot,
with the packages' own tools, before the services that read them start
(``hostlayer.package_secret_entries``).

The table comes from reading the maintainer scripts of every package the
shipped layers install, dependencies included, on bookworm and trixie (keygen,
openssl, rndc-confgen, /dev/urandom): bind9 runs ``rndc-confgen -a``, ssl-cert
``make-ssl-cert generate-default-snakeoil``, systemd writes a machine-id, dbus
``dbus-uuidgen --ensure`` and openssh-server host keys. kea-ctrl-agent makes a
random API password only when debconf is told to (its default does nothing),
and the lanmain pair's Kea password is in the secrets store, since both peers
must know it. The rest are state files that their daemon makes at runtime and
that a hook could have left behind: ``regenerate`` is empty for those, their
owner makes them again.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PackageSecret:
    name: str                       # how meta.json and the first-boot script call it
    package: str                    # whose maintainer script (or daemon) makes it
    paths: tuple[str, ...]          # absolute; glob patterns allowed
    regenerate: str = ""            # shell run on first boot while a path is missing;
    #                                 "" when its owner makes it again by itself
    before: tuple[str, ...] = ()    # the units that read it
    hash_link_of: str = ""          # also remove the OpenSSL hash links to this certificate
    reset: str | None = None        # write this instead of removing the file
    regular_only: bool = False      # a symlink there is not a secret (dbus -> /etc/machine-id)


# Services that read the snakeoil pair in Debian's default configurations.
_SNAKEOIL_READERS = ("nginx.service", "apache2.service", "haproxy.service", "vsftpd.service",
                     "postfix.service", "exim4.service", "dovecot.service", "lighttpd.service")

PACKAGE_SECRETS: tuple[PackageSecret, ...] = (
    PackageSecret("rndc-key", "bind9", ("/etc/bind/rndc.key",),
                  regenerate="rndc-confgen -a",
                  before=("named.service", "bind9.service")),
    PackageSecret("ssl-cert-snakeoil", "ssl-cert",
                  ("/etc/ssl/private/ssl-cert-snakeoil.key",
                   "/etc/ssl/certs/ssl-cert-snakeoil.pem"),
                  regenerate="make-ssl-cert generate-default-snakeoil --force-overwrite",
                  before=_SNAKEOIL_READERS,
                  hash_link_of="/etc/ssl/certs/ssl-cert-snakeoil.pem"),
    # The host stage writes the host's own keys from the secrets store; a type
    # the store lacks is made by pibake-ssh-host-keys.service.
    PackageSecret("ssh-host-keys", "openssh-server", ("/etc/ssh/ssh_host_*",)),
    # The host stage writes the host's own /etc/machine-id; "uninitialized" is
    # what systemd itself leaves in an image meant to be copied.
    PackageSecret("machine-id", "systemd", ("/etc/machine-id",), reset="uninitialized\n"),
    PackageSecret("dbus-machine-id", "dbus", ("/var/lib/dbus/machine-id",),
                  regular_only=True),
    PackageSecret("random-seed", "systemd", ("/var/lib/systemd/random-seed",)),
    PackageSecret("credential-secret", "systemd", ("/var/lib/systemd/credential.secret",)),
    PackageSecret("openssl-rnd", "openssl", ("/root/.rnd",)),
    PackageSecret("docker-key", "docker.io", ("/etc/docker/key.json",)),
)
BY_NAME = {s.name: s for s in PACKAGE_SECRETS}


@dataclass(frozen=True)
class RemovedFile:
    path: str          # absolute, in the image
    kind: str          # "file" or "symlink"
    uid: int
    gid: int
    mode: int

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "uid": self.uid, "gid": self.gid,
                "mode": self.mode}


@dataclass(frozen=True)
class Removed:
    """One table entry that the role had, and the files it removed (or reset)."""

    name: str
    files: tuple[RemovedFile, ...]

    @property
    def secret(self) -> PackageSecret:
        return BY_NAME[self.name]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "files": [f.as_json() for f in self.files]}


def removed_from_meta(items: list[dict[str, Any]]) -> tuple[Removed, ...]:
    """meta.json's ``package_secrets`` back into types (names this code does not know
    are dropped: nothing to make again for them)."""
    return tuple(Removed(item["name"], tuple(RemovedFile(**f) for f in item["files"]))
                 for item in items if item["name"] in BY_NAME)


def _inside(tree: Path, path: Path) -> bool:
    """``path``'s folder, with symlinks resolved, is still under ``tree``."""
    return path.parent.resolve().is_relative_to(tree.resolve())


def _matches(tree: Path, secret: PackageSecret) -> list[Path]:
    found: set[Path] = set()
    for pattern in secret.paths:
        found.update(tree.glob(pattern.lstrip("/")))
    if secret.hash_link_of:
        cert = tree / secret.hash_link_of.lstrip("/")
        folder, name = cert.parent, cert.name
        if folder.is_dir() and not folder.is_symlink():
            found.update(p for p in folder.iterdir()
                         if p.is_symlink() and os.readlink(p) in (name, secret.hash_link_of))
    kept = []
    for path in sorted(found):
        if not _inside(tree, path) or not (path.is_symlink() or path.is_file()):
            continue
        if secret.regular_only and path.is_symlink():
            continue
        kept.append(path)
    return kept


def strip_package_secrets(tree: Path) -> tuple[Removed, ...]:
    """Remove (or reset) every table entry's files from the role tree; what was
    removed, in table order, with the owners and modes the packages gave them."""
    removed = []
    for secret in PACKAGE_SECRETS:
        files = []
        for path in _matches(tree, secret):
            st = path.lstat()
            files.append(RemovedFile(path="/" + path.relative_to(tree).as_posix(),
                                     kind="symlink" if stat.S_ISLNK(st.st_mode) else "file",
                                     uid=st.st_uid, gid=st.st_gid,
                                     mode=stat.S_IMODE(st.st_mode)))
            if secret.reset is not None and not path.is_symlink():
                path.write_text(secret.reset)
            else:
                path.unlink()
        if files:
            removed.append(Removed(secret.name, tuple(files)))
    return tuple(removed)


def to_make_again(removed: tuple[Removed, ...]) -> tuple[Removed, ...]:
    """The removed entries that the first-boot unit makes again (those with a tool)."""
    return tuple(r for r in removed if r.secret.regenerate)
