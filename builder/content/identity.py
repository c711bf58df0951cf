"""A host's escrowed identity: what makes a rebuilt node the same node.

From the secrets store, per host: its SSH host keys with host certificates
(so clients trust the cluster's host CA instead of each key), the user CA that
sshd trusts for logins, the one ``@cert-authority`` known_hosts line, the
cluster's TLS root certificate, a machine-id derived by HMAC from the host's
secret (stable across rebuilds, not derivable from names), and, in the images
of hosts whose layers declare them, the CAs' private keys. Written in the host
stage only: nothing here ever enters a cached role.
"""

from __future__ import annotations

from dataclasses import replace

from builder.content.hostlayer import HostDelta, RoleFacts, host_delta
from builder.content.render import render_host
from builder.content.secrets import Store, key_types
from builder.errors import ConfigError
from builder.image.assemble import Entry
from builder.plan import HostPlan

CA_DIR = "/etc/pibake/ca"            # only in the images of the CAs' holders (the deployer)
USER_CA = "/etc/ssh/pibake_user_ca.pub"
TLS_ROOT = "/etc/pibake/tls_root_ca.crt"
SSHD_CONF = "/etc/ssh/sshd_config.d/20-pibake-identity.conf"


def machine_id(store: Store, host: str) -> str:
    """32 hex digits shaped like systemd's own (a v4 UUID), from the host secret."""
    digest = bytearray(store.host_hmac(host, "machine-id")[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


def _file(path: str, text: str, mode: int) -> Entry:
    return Entry(path=path, kind="file", data=text.encode(), mode=mode)


def host_identity(plan: HostPlan, facts: RoleFacts) -> tuple[HostDelta, list[str], set[str]]:
    """The host's delta with its secrets: templates read the store, and the
    identity files are added (they win over the same path from elsewhere).
    Also the secret names the image carries, and the paths in the image whose
    contents are secret (kept out of the manifest, even as hashes). The store
    is created, and what this host needs is generated, on first use."""
    inv, host = plan.inventory, plan.host
    store = Store.at(inv)
    store.ensure(store.for_host(host))
    delta = host_delta(plan, facts, tuple(render_host(inv, host, store)))
    names: list[str] = []
    private = {r.dest for r in delta.rendered if r.secrets}
    boot = plan.base.boot_mount.rstrip("/") + "/"
    for r in delta.rendered:
        if r.secrets and r.dest.startswith(boot):
            raise ConfigError(f"{r.source}: reads secret {r.secrets[0]!r} but goes to the boot "
                              "partition (FAT: readable by anyone with the card); move it "
                              "under /etc")
    entries: list[Entry] = []
    sshd = ["# managed by pibake, host identity: certificates from the cluster's SSH CAs"]
    for t in key_types(inv, host):
        key = f"ssh_host_{t}_key"
        stored = f"hosts/{host}/{key}"
        entries += [
            _file(f"/etc/ssh/{key}", store.read(stored), 0o600),
            _file(f"/etc/ssh/{key}.pub", store.read(f"{stored}.pub"), 0o644),
            _file(f"/etc/ssh/{key}-cert.pub", store.read(f"{stored}-cert.pub"), 0o644),
        ]
        sshd.append(f"HostCertificate /etc/ssh/{key}-cert.pub")
        names.append(key)
        private.add(f"/etc/ssh/{key}")
    sshd.append(f"TrustedUserCAKeys {USER_CA}")
    entries += [
        _file(SSHD_CONF, "\n".join(sshd) + "\n", 0o644),
        _file(USER_CA, store.read("ca/ssh_user_ca.pub"), 0o644),
        _file("/etc/ssh/ssh_known_hosts", "# managed by pibake, host identity: every node's "
              "host key is signed by the cluster's host CA\n" + store.read("known_hosts"), 0o644),
        _file(TLS_ROOT, store.read("ca/tls_root_ca.crt"), 0o644),
        _file("/etc/machine-id", machine_id(store, host) + "\n", 0o444),
        # dbus's postinst wrote its own id into the cached role, the same in every
        # image of the role; Debian makes it a link to /etc/machine-id
        Entry(path="/var/lib/dbus/machine-id", kind="symlink", target="/etc/machine-id",
              mode=0o777),
    ]
    held = store.items()
    cas = [(n, f) for n, f in (("ssh_host_ca", "ssh_host_ca"), ("ssh_user_ca", "ssh_user_ca"),
                               ("tls_root_ca", "tls_root_ca.key")) if host in held[n].holders]
    if cas:
        entries.append(Entry(path=CA_DIR, kind="dir", mode=0o700))
        for name, file in cas:
            entries.append(_file(f"{CA_DIR}/{file}", store.read(held[name].files[-1]), 0o400))
            private.add(f"{CA_DIR}/{file}")
            names.append(name)
    # the shared secrets its files read: a declared one that no template of
    # this host's base uses (lanmain_omapi beside Kea) is held, not carried
    read = {n for r in delta.rendered for n in r.secrets}
    names += [n for n in store.for_host(host) if n in read and held[n].kind not in
              ("ssh-ca", "x509-ca", "host-secret", "ssh-host-key", "ssh-host-cert")]
    paths = {e.path for e in entries}
    root = [e for e in delta.root if e.path not in paths] + entries
    return replace(delta, root=tuple(root)), sorted(names), private
