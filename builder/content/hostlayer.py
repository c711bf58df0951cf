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

from builder.content.render import Rendered, render_host
from builder.content.secrets import SecretSource
from builder.errors import ConfigError
from builder.image.assemble import Entry, partuuid
from builder.inventory.bases import Base, Model
from builder.inventory.config import Inventory

FIRSTBOOT_DIR = Path(__file__).resolve().parents[2] / "firstboot"
STEPS_DEST = "/usr/local/lib/pibake/firstboot.d"
STATUS_FILE = "pibake-firstboot.txt"
# The boot partition is mounted on first use, so booting never waits for its
# device and fsck (12 s of an emulated boot); whatever reads or writes it
# (raspi-firmware on kernel upgrades, the first-boot status file) waits instead.
BOOT_MOUNT_OPTIONS = "defaults,x-systemd.automount"
# The runner, and the unit that creates SSH host keys before sshd first starts.
UNITS = ("pibake-firstboot.service", "pibake-ssh-host-keys.service")

# Serial console per Pi family with Debian's kernels and upstream device trees.
SERIAL_CONSOLE = {
    Model.pi0: "ttyAMA0", Model.pi1: "ttyAMA0", Model.pi2: "ttyAMA0",
    Model.pi3: "ttyS1", Model.pi4: "ttyS1",
}


@dataclass(frozen=True)
class RoleFacts:
    """What the host layer needs to know about the cached role root file system."""

    passwd: str            # /etc/passwd of the role image
    cmdline: str           # the base's own cmdline.txt ("" when it has none)
    dhcpcd_conf: str       # /etc/dhcpcd.conf of the role image ("" when absent)


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


def hosts_file(inv: Inventory, host: str) -> str:
    dom = inv.cluster.domain
    lines = [
        "# managed by pibake, host layer: every node of the cluster",
        "127.0.0.1\tlocalhost",
        f"127.0.1.1\t{host}.{dom}\t{host}",
        "::1\t\tlocalhost ip6-localhost ip6-loopback",
        "ff02::1\t\tip6-allnodes",
        "ff02::2\t\tip6-allrouters",
        "",
    ]
    lines += [f"{n.ip}\t{n.name}.{dom}\t{n.name}" for n in inv.cluster.nodes.values()
              if n.name != host]
    return "\n".join(lines) + "\n"


def network_entries(inv: Inventory, host: str, base: Base, facts: RoleFacts) -> list[Entry]:
    node = inv.node(host)
    net = inv.network(host)
    addr = f"{node.ip}/{net.cidr.prefixlen}"
    dns = [str(d) for d in net.dns]
    resolv = "# managed by pibake, host layer\n" + f"search {inv.cluster.domain}\n" + "".join(
        f"nameserver {d}\n" for d in dns)
    entries = [_file("/etc/resolv.conf", resolv)]
    if base.network == "networkd":
        match = f"MACAddress={node.mac}" if node.mac else "Name=eth0"
        entries += [
            _file("/etc/systemd/network/10-pibake-lan.network",
                  "# managed by pibake, host layer\n"
                  f"[Match]\n{match}\n\n"
                  f"[Network]\nAddress={addr}\nGateway={net.gateway}\n"
                  + "".join(f"DNS={d}\n" for d in dns)
                  + f"Domains={inv.cluster.domain}\n"),
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
    elif base.network == "dhcpcd":
        kept = re.sub(r"\n# BEGIN pibake.*?# END pibake\n", "\n", facts.dhcpcd_conf, flags=re.S)
        block = (f"# BEGIN pibake (managed by pibake, host layer)\ninterface eth0\n"
                 f"static ip_address={addr}\nstatic routers={net.gateway}\n"
                 f"static domain_name_servers={' '.join(dns)}\n"
                 f"static domain_search={inv.cluster.domain}\n# END pibake\n")
        entries.append(_file("/etc/dhcpcd.conf", kept.rstrip("\n") + "\n\n" + block))
    elif base.network == "networkmanager":
        match = f"mac-address={node.mac}\n" if node.mac else "interface-name=eth0\n"
        entries.append(_file(
            "/etc/NetworkManager/system-connections/pibake-lan.nmconnection",
            "# managed by pibake, host layer\n[connection]\nid=pibake-lan\ntype=ethernet\n"
            + ("" if node.mac else "interface-name=eth0\n")
            + "autoconnect=true\n\n[ethernet]\n" + (match if node.mac else "")
            + f"\n[ipv4]\nmethod=manual\naddress1={addr},{net.gateway}\n"
            f"dns={';'.join(dns)};\ndns-search={inv.cluster.domain};\n\n[ipv6]\nmethod=ignore\n",
            mode=0o600))
    return entries


def cmdline_for(inv: Inventory, host: str, base: Base, facts: RoleFacts, disk: int) -> str:
    root = f"root=PARTUUID={partuuid(disk, 2)}"
    if facts.cmdline.strip():
        words = [w for w in facts.cmdline.split()
                 if not w.startswith(("root=", "init=/usr/lib/raspi-config/init_resize"))]
        words.insert(0, root)
        return " ".join(words) + "\n"
    console = SERIAL_CONSOLE[inv.node(host).model]
    return (f"console=tty0 console={console},115200 {root} rw fsck.repair=yes "
            "net.ifnames=0 rootwait\n")


def firstboot_entries(inv: Inventory, host: str, base: Base) -> list[Entry]:
    steps: dict[str, tuple[Path, str]] = {}
    for src in sorted((FIRSTBOOT_DIR / "steps").glob("*.sh")):
        steps[src.name] = (src, "firstboot/steps")
    for name in inv.profile(host).layers:
        layer = inv.layers[name]
        for src in layer.firstboot:
            if src.name in steps:
                raise ConfigError(
                    f"{layer.shown}/firstboot.d/{src.name}: a step with this name already comes "
                    f"from {steps[src.name][1]}; rename it (step names are unique per image)")
            steps[src.name] = (src, f"{layer.shown}/firstboot.d")
    env = (f"# managed by pibake, host layer\nPIBAKE_HOST={host}\n"
           f"PIBAKE_BOOT_DIR={base.boot_mount}\nPIBAKE_STATUS_FILE={STATUS_FILE}\n")
    entries = [
        _file("/usr/local/sbin/pibake-firstboot",
              (FIRSTBOOT_DIR / "pibake-firstboot").read_text(), 0o755),
        _file("/etc/pibake/firstboot.env", env),
        Entry(path=STEPS_DEST, kind="dir", mode=0o755),
    ]
    entries += [_file(f"{STEPS_DEST}/{name}", src.read_text(), 0o755)
                for name, (src, _) in sorted(steps.items())]
    for unit in UNITS:
        entries += [
            _file(f"/etc/systemd/system/{unit}", (FIRSTBOOT_DIR / unit).read_text()),
            _link(f"/etc/systemd/system/multi-user.target.wants/{unit}",
                  f"/etc/systemd/system/{unit}"),
        ]
    return entries


def host_delta(inv: Inventory, host: str, facts: RoleFacts,
               secrets: SecretSource | None = None) -> HostDelta:
    profile = inv.profile(host)
    base = profile.base
    disk = disk_id(inv.cluster.name, host)
    rendered = render_host(inv, host, secrets)
    boot_prefix = base.boot_mount.rstrip("/") + "/"
    root: list[Entry] = []
    boot: list[Entry] = []
    for r in rendered:
        entry = Entry(path=r.dest, kind="file", data=r.data, mode=r.mode)
        if r.dest.startswith(boot_prefix):
            boot.append(Entry(path="/" + r.dest[len(boot_prefix):], kind="file", data=r.data))
        else:
            root.append(entry)

    fstab = (
        "# managed by pibake, host layer\n"
        f"PARTUUID={partuuid(disk, 2)}\t/\text4\tdefaults,noatime\t0\t1\n"
        f"PARTUUID={partuuid(disk, 1)}\t{base.boot_mount}\tvfat\t{BOOT_MOUNT_OPTIONS}\t0\t2\n"
    )
    root += [
        _file("/etc/hostname", host + "\n"),
        _file("/etc/hosts", hosts_file(inv, host)),
        _file("/etc/fstab", fstab),
        _file("/etc/machine-id", machine_id(inv.cluster.name, host) + "\n", 0o444),
        # systemd-firstboot prompts on the console when it runs; the image must
        # never wait for a human, whatever a base or layer did to machine-id.
        _link("/etc/systemd/system/systemd-firstboot.service", "/dev/null"),
    ]
    root += network_entries(inv, host, base, facts)
    if base.name == "debian-bookworm":
        # raspi-firmware regenerates cmdline.txt on kernel upgrades from this file.
        console = SERIAL_CONSOLE[inv.node(host).model]
        root.append(_file("/etc/default/raspi-firmware",
                          "# managed by pibake, host layer\n"
                          f"ROOTPART=PARTUUID={partuuid(disk, 2)}\n"
                          f"CONSOLES=\"tty0 {console},115200\"\n"))
    user = inv.cluster.admin.user
    uid, gid, home = _user_ids(facts.passwd, user)
    keys = "".join(k + "\n" for k in inv.cluster.admin.ssh_authorized_keys)
    root += [
        Entry(path=posixpath.join(home, ".ssh"), kind="dir", mode=0o700, uid=uid, gid=gid),
        _file(posixpath.join(home, ".ssh/authorized_keys"), keys, 0o600, uid, gid),
    ]
    root += firstboot_entries(inv, host, base)
    root.append(_file("/etc/pibake/host.json", json.dumps(
        {"host": host, "cluster": inv.cluster.name, "layers": list(profile.layers),
         "base": base.name}, indent=2, sort_keys=True) + "\n"))
    boot.append(_file("/cmdline.txt", cmdline_for(inv, host, base, facts, disk)))
    # The host's identity files win over a layer template of the same path.
    return HostDelta(root=tuple(_dedupe(root)), boot=tuple(_dedupe(boot)),
                     rendered=tuple(rendered))


def _dedupe(entries: list[Entry]) -> list[Entry]:
    last = {e.path: i for i, e in enumerate(entries)}
    return [e for i, e in enumerate(entries) if last[e.path] == i]
