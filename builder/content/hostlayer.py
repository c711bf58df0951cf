"""The host's own layer: what makes one image this node and no other.

Hostname, /etc/hosts with every node, static network configuration for the
base's network stack, fstab and cmdline.txt naming the partitions by PARTUUID,
the admin's SSH keys, the first-boot runner with every layer's steps, and the
rendered templates of all layers. No ARM program runs here: these are files
written into cached partition images, which is why a warm build takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from builder.content.render import Rendered, strict_env
from builder.emulate.bootstrap import PI_FAMILIES
from builder.emulate.pkgsecrets import Removed, to_make_again
from builder.errors import BuildError, ConfigError
from builder.image.assemble import Entry, partuuid
from builder.inventory.bases import BaseKind
from builder.inventory.layers import resolve_owner

if TYPE_CHECKING:
    from builder.plan import HostPlan

FIRSTBOOT_DIR = Path(__file__).resolve().parents[2] / "firstboot"
HOSTFILES_DIR = Path(__file__).resolve().parent / "hostfiles"  # the host files' templates
STEPS_DEST = "/usr/local/lib/pibake/firstboot.d"
STATUS_FILE = "pibake-firstboot.txt"
# The boot partition is mounted on first use, so booting never waits for its
# device and fsck (12 s of an emulated boot); whatever reads or writes it
# (raspi-firmware on kernel upgrades, the first-boot status file) waits instead.
BOOT_MOUNT_OPTIONS = "defaults,x-systemd.automount"
# The runner, and the unit that creates SSH host keys before sshd first starts.
UNITS = ("pibake-firstboot.service", "pibake-ssh-host-keys.service")
# ... and the one that makes the secrets the role's packages made at install
# time, per node (written only when the role had any; see package_secret_entries).
PACKAGE_SECRETS_UNIT = "pibake-package-secrets.service"
PACKAGE_SECRETS_SCRIPT = "/usr/local/sbin/pibake-package-secrets"



@dataclass(frozen=True)
class RoleFacts:
    """What the host layer needs to know about the cached role root file system."""

    passwd: str            # /etc/passwd of the role image
    cmdline: str           # the base's own cmdline.txt ("" when it has none)
    dhcpcd_conf: str       # /etc/dhcpcd.conf of the role image ("" when absent)
    group: str = ""        # /etc/group of the role image
    standin: bool = False  # planning without a role: accounts made by packages are unknown
    # the package-generated secrets the role stage removed (emulate/pkgsecrets.py)
    package_secrets: tuple[Removed, ...] = ()


@dataclass(frozen=True)
class HostDelta:
    root: tuple[Entry, ...]     # into the ext4 root file system
    boot: tuple[Entry, ...]     # into the FAT boot partition (paths relative to it)
    rendered: tuple[Rendered, ...]


def disk_id(cluster: str, host: str) -> int:
    """A stable MBR disk id per host, so PARTUUIDs survive rebuilds."""
    value = int(hashlib.sha256(f"pibake:{cluster}:{host}".encode()).hexdigest()[:8], 16)
    return value or 1


def machine_id(cluster: str, host: str) -> str:
    """The host's /etc/machine-id, fixed at build time and stable across rebuilds.

    A fixed id means systemd never sees a first boot: no preset-all pass over
    every unit (12 s under emulation), no machine-id commit, and the DHCP
    client id that systemd-networkd derives from it survives a re-flashed card.
    Derived from names: what `pibake render` shows. A build replaces it with
    one derived from the host's secret (identity.machine_id), which is not
    guessable from names, as machine-id(5) asks.
    """
    digest = bytearray(hashlib.sha256(f"pibake-machine-id:{cluster}:{host}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40      # shaped like systemd's own: a v4 UUID
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


def _file(path: str, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path=path, kind="file", data=text.encode(), mode=mode, uid=uid, gid=gid)


def _link(path: str, target: str) -> Entry:
    return Entry(path=path, kind="symlink", target=target, mode=0o777)


def _user_ids(passwd: str, user: str) -> tuple[int, int, str]:
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == user:
            return int(fields[2]), int(fields[3]), fields[5]
    raise ConfigError(f"profiles/cluster.yaml: cluster.admin.user: account '{user}' does not "
                      "exist in the image; select the base layer, which creates it")


def standin_facts(plan: HostPlan) -> RoleFacts:
    """Role facts for planning and review, before any role exists: the admin
    account as the base layer creates it, no base cmdline, no dhcpcd.conf."""
    user = plan.cluster.admin.user
    return RoleFacts(passwd=(f"root:x:0:0::/root:/bin/sh\n"
                             f"{user}:x:1000:1000::/home/{user}:/bin/bash\n"),
                     cmdline="", dhcpcd_conf="", group=f"root:x:0:\n{user}:x:1000:\n",
                     standin=True)


def _render(name: str, values: dict[str, Any]) -> str:
    """A built-in host file template (``hostfiles/NAME.j2``), strictly rendered."""
    global _templates
    if _templates is None:
        _templates = strict_env(HOSTFILES_DIR, trim_blocks=True, lstrip_blocks=True)
    try:
        return _templates.get_template(f"{name}.j2").render(values)
    except jinja2.TemplateError as exc:  # a bug in pibake, not in the inventory
        raise BuildError(f"builder/content/hostfiles/{name}.j2: {exc}") from None


_templates: jinja2.Environment | None = None


def host_values(plan: HostPlan, disk: int) -> dict[str, Any]:
    """What the built-in host file templates see."""
    node, net = plan.node, plan.network
    return {
        "host": plan.host,
        "domain": plan.cluster.domain,
        "nodes": [{"name": n.name, "ip": str(n.ip)} for n in plan.cluster.nodes.values()],
        "mac": node.mac,
        "address": f"{node.ip}/{net.cidr.prefixlen}",
        "gateway": str(net.gateway),
        "dns": [str(d) for d in net.dns],
        "root_partuuid": partuuid(disk, 2),
        "boot_partuuid": partuuid(disk, 1),
        "boot_mount": plan.base.boot_mount,
        "boot_mount_options": BOOT_MOUNT_OPTIONS,
        "machine_id": machine_id(plan.cluster.name, plan.host),
        "console": PI_FAMILIES[str(node.model)].console,
        "status_file": STATUS_FILE,
    }


def network_entries(plan: HostPlan, facts: RoleFacts, values: dict[str, Any]) -> list[Entry]:
    entries = [_file("/etc/resolv.conf", _render("resolv.conf", values))]
    if plan.base.network == "networkd":
        entries += [
            _file("/etc/systemd/network/10-pibake-lan.network",
                  _render("10-pibake-lan.network", values)),
            _link("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
                  "/lib/systemd/system/systemd-networkd.service"),
            _link("/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
                  "/lib/systemd/system/systemd-networkd.socket"),
            _link("/etc/systemd/system/network-online.target.wants/"
                  "systemd-networkd-wait-online.service",
                  "/lib/systemd/system/systemd-networkd-wait-online.service"),
            # ip=/nameserver= on the kernel command line become .network files
            # under /run: a rescue path on a Pi (ip=eth0:dhcp in cmdline.txt) and
            # how `pibake boot` gives its management NIC an address.
            _link("/etc/systemd/system/sysinit.target.wants/systemd-network-generator.service",
                  "/lib/systemd/system/systemd-network-generator.service"),
        ]
    elif plan.base.network == "dhcpcd":
        kept = re.sub(r"\n# BEGIN pibake.*?# END pibake\n", "\n", facts.dhcpcd_conf, flags=re.S)
        entries.append(_file("/etc/dhcpcd.conf", kept.rstrip("\n") + "\n\n"
                             + _render("dhcpcd.block", values)))
    elif plan.base.network == "networkmanager":
        entries.append(_file("/etc/NetworkManager/system-connections/pibake-lan.nmconnection",
                             _render("pibake-lan.nmconnection", values), mode=0o600))
    return entries


def cmdline_for(plan: HostPlan, facts: RoleFacts, disk: int) -> str:
    """The base's own command line with root= by PARTUUID (and the one-time
    resize dropped: the runner grows the card), or pibake's own."""
    words = [w for w in facts.cmdline.split()
             if not w.startswith(("root=", "init=/usr/lib/raspi-config/init_resize"))]
    return _render("cmdline.txt", {**host_values(plan, disk),
                                   "base_cmdline": words if facts.cmdline.strip() else []})


def firstboot_entries(plan: HostPlan) -> list[Entry]:
    env = _render("firstboot.env", host_values(plan, disk_id(plan.cluster.name, plan.host)))
    entries = [
        _file("/usr/local/sbin/pibake-firstboot",
              (FIRSTBOOT_DIR / "pibake-firstboot").read_text(), 0o755),
        _file("/etc/pibake/firstboot.env", env),
        Entry(path=STEPS_DEST, kind="dir", mode=0o755),
    ]
    entries += [_file(f"{STEPS_DEST}/{step.name}", step.src.read_text(), 0o755)
                for step in plan.steps]
    for unit in UNITS:
        entries += [
            _file(f"/etc/systemd/system/{unit}", (FIRSTBOOT_DIR / unit).read_text()),
            _link(f"/etc/systemd/system/multi-user.target.wants/{unit}",
                  f"/etc/systemd/system/{unit}"),
        ]
    return entries


def package_secret_entries(facts: RoleFacts) -> list[Entry]:
    """The unit and script that make this node's own copies of the secrets the
    role stage removed, before the services that read them; nothing when the
    role had none that a tool must make again."""
    # (a role with a stray hash link alone has nothing to check for)
    wanted = [r for r in to_make_again(facts.package_secrets)
              if any(f.kind == "file" for f in r.files)]
    if not wanted:
        return []
    secrets = [{"name": r.name, "package": r.secret.package, "regenerate": r.secret.regenerate,
                "files": [{"path": f.path, "uid": f.uid, "gid": f.gid, "mode": f"{f.mode:04o}"}
                          for f in r.files if f.kind == "file"]}
               for r in wanted]
    before = sorted({unit for r in wanted for unit in r.secret.before})
    unit = f"/etc/systemd/system/{PACKAGE_SECRETS_UNIT}"
    return [
        _file(PACKAGE_SECRETS_SCRIPT, _render("pibake-package-secrets", {"secrets": secrets}),
              0o755),
        _file(unit, _render("pibake-package-secrets.service", {"before": before})),
        _link(f"/etc/systemd/system/multi-user.target.wants/{PACKAGE_SECRETS_UNIT}", unit),
    ]


def host_delta(plan: HostPlan, facts: RoleFacts,
               rendered: tuple[Rendered, ...] | None = None) -> HostDelta:
    """The host's files; ``rendered``: the layer templates rendered with the
    secrets store (the host stage), else the plan's (stand-ins for secrets)."""
    host = plan.host
    base = plan.base
    cluster = plan.cluster
    disk = disk_id(cluster.name, host)
    rendered = plan.rendered if rendered is None else rendered
    boot_prefix = base.boot_mount.rstrip("/") + "/"
    root: list[Entry] = []
    boot: list[Entry] = []
    for r in rendered:
        uid, gid = _owner_ids(r, facts)
        entry = Entry(path=r.dest, kind="file", data=r.data, mode=r.mode, uid=uid, gid=gid)
        if r.dest.startswith(boot_prefix):
            boot.append(Entry(path="/" + r.dest[len(boot_prefix):], kind="file", data=r.data))
        else:
            root.append(entry)

    values = host_values(plan, disk)
    root += [
        _file("/etc/hostname", _render("hostname", values)),
        _file("/etc/hosts", _render("hosts", values)),
        _file("/etc/fstab", _render("fstab", values)),
        _file("/etc/machine-id", _render("machine-id", values), 0o444),
        # systemd-firstboot prompts on the console when it runs; the image must
        # never wait for a human, whatever a base or layer did to machine-id.
        _link("/etc/systemd/system/systemd-firstboot.service", "/dev/null"),
    ]
    root += network_entries(plan, facts, values)
    if base.kind is BaseKind.bootstrap:
        # raspi-firmware (every bootstrapped Debian base) regenerates cmdline.txt
        # from this file on each kernel upgrade: without it an upgraded node
        # would look for its root by the package's default label and not boot.
        root.append(_file("/etc/default/raspi-firmware", _render("raspi-firmware", values)))
    user = cluster.admin.user
    uid, gid, home = _user_ids(facts.passwd, user)
    keys = "".join(k + "\n" for k in cluster.admin.ssh_authorized_keys)
    root += [
        Entry(path=posixpath.join(home, ".ssh"), kind="dir", mode=0o700, uid=uid, gid=gid),
        _file(posixpath.join(home, ".ssh/authorized_keys"), keys, 0o600, uid, gid),
    ]
    root += firstboot_entries(plan)
    root += package_secret_entries(facts)
    root.append(_file("/etc/pibake/host.json", json.dumps(
        {"host": host, "cluster": cluster.name, "layers": list(plan.layer_names),
         "base": base.name}, indent=2, sort_keys=True) + "\n"))
    boot.append(_file("/cmdline.txt", cmdline_for(plan, facts, disk)))
    # The host's identity files win over a layer template of the same path.
    return HostDelta(root=tuple(_dedupe(root)), boot=tuple(_dedupe(boot)),
                     rendered=tuple(rendered))


def _owner_ids(r: Rendered, facts: RoleFacts) -> tuple[int, int]:
    ids = resolve_owner(r.owner, facts.passwd, facts.group)
    if ids is not None:
        return ids
    if facts.standin:
        return 0, 0  # the account may come with a package; the build resolves it
    layer_yaml = r.source.split("/templates/", 1)[0] + "/layer.yaml"
    raise BuildError(f"{layer_yaml}: owners.{r.dest}: {r.owner!r} is not an account of the "
                     "image; create it in a hook or install the package that does")


def _dedupe(entries: list[Entry]) -> list[Entry]:
    last = {e.path: i for i, e in enumerate(entries)}
    return [e for i, e in enumerate(entries) if last[e.path] == i]
