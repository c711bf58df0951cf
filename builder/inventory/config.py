"""The inventory: ``profiles/cluster.yaml`` plus one ``profiles/<host>.yaml`` per node.

Parsed once into frozen objects; nothing downstream touches raw YAML. Every
mistake is a ConfigError naming the file, the key path, the bad value and the
fix.

cluster.yaml::

    cluster:
      name: rpi-cluster            # used in the manifest and MOTD
      domain: cluster.lan          # DNS domain of every node
      timezone: Etc/UTC
      mirror: null                 # Debian archive URL; default: the build host's apt sources
      base: debian-trixie          # every host's base unless its own file names one
      secrets_dir: null            # the secrets store; default: secrets/ beside profiles/
      admin:
        user: admin                # login account; no password, SSH keys only
        ssh_authorized_keys: []
    networks:
      dmz: {cidr: 10.20.0.0/24, gateway: 10.20.0.1, dns: [10.20.0.11, 10.20.0.12]}
    nodes:
      compute-01: {model: pi3, network: dmz, ip: 10.20.0.31, mac: "b8:27:eb:00:00:31"}
    vars: {}                       # cluster-wide values for layer variables
    bases: {}                      # extra image bases: {name: {url|path, sha256, arch, suite}}

<host>.yaml::

    base: debian-bookworm          # optional: overrides cluster.base
    layers: [base, compute]
    vars: {compute_keepalived_priority: 150}
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from builder.errors import ConfigError
from builder.inventory.bases import CATALOG, DEFAULT_BASE, Base, BaseKind, Model
from builder.inventory.facts import check_lanmain, check_lanmain_pair
from builder.inventory.layers import Layer, load_layers
from builder.inventory.schema import (
    Reader,
    cidr,
    hostname,
    ipv4,
    known_list,
    load_yaml,
    mac,
    short,
    suggest,
)
from builder.inventory.vartypes import check_vars

CLUSTER_FILE = "profiles/cluster.yaml"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SSH_KEY_RE = re.compile(
    r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$"
)


@dataclass(frozen=True)
class Network:
    name: str
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    dns: tuple[ipaddress.IPv4Address, ...]


@dataclass(frozen=True)
class Node:
    name: str
    model: Model
    network: str
    ip: ipaddress.IPv4Address
    mac: str | None


@dataclass(frozen=True)
class Admin:
    user: str
    ssh_authorized_keys: tuple[str, ...]


@dataclass(frozen=True)
class Cluster:
    name: str
    domain: str
    timezone: str
    mirror: str | None
    admin: Admin
    networks: Mapping[str, Network]
    nodes: Mapping[str, Node]          # in file order
    vars: Mapping[str, Any]
    bases: Mapping[str, Base]          # the catalog plus the user's own
    base: str = DEFAULT_BASE           # cluster.base: every host's unless its file names one
    secrets_dir: str | None = None     # cluster.secrets_dir as written (relative to the project)


@dataclass(frozen=True)
class Profile:
    host: str
    shown: str                         # "profiles/compute-01.yaml"
    base: Base
    layers: tuple[str, ...]
    vars: Mapping[str, Any]            # the host file's own vars


@dataclass(frozen=True)
class Inventory:
    root: Path
    cluster: Cluster
    layers: Mapping[str, Layer]
    profiles: Mapping[str, Profile]

    def profile(self, host: str) -> Profile:
        if host not in self.profiles:
            raise ConfigError(
                f"profiles/{host}.yaml: no such profile (known: {known_list(self.profiles)})"
                f"{suggest(host, self.profiles)}"
            )
        return self.profiles[host]

    def node(self, host: str) -> Node:
        return self.cluster.nodes[host]

    def network(self, host: str) -> Network:
        return self.cluster.networks[self.node(host).network]

    def host_vars(self, host: str) -> dict[str, Any]:
        """Layer defaults (profile order) < cluster vars < host vars."""
        profile = self.profile(host)
        merged: dict[str, Any] = {}
        for name in profile.layers:
            merged.update(self.layers[name].defaults)
        declared = set(merged)
        merged.update({k: v for k, v in self.cluster.vars.items() if k in declared})
        merged.update(profile.vars)
        return merged

    def var_origin(self, host: str, key: str) -> str:
        """Where ``key``'s value for ``host`` is set, as an error message starts:
        ``profiles/compute-01.yaml: vars.KEY`` (host file, then cluster.yaml,
        then the last selected layer that declares it)."""
        profile = self.profile(host)
        if key in profile.vars:
            return f"{profile.shown}: vars.{key}"
        if key in self.cluster.vars:
            return f"profiles/cluster.yaml: vars.{key}"
        for name in reversed(profile.layers):
            if key in self.layers[name].defaults:
                return f"{self.layers[name].shown}/defaults.yaml: {key}"
        return key

    def groups(self) -> dict[str, list[str]]:
        """Layer name -> hosts whose profile selects it (inventory order)."""
        result: dict[str, list[str]] = {name: [] for name in self.layers}
        for host, profile in self.profiles.items():
            for name in profile.layers:
                result[name].append(host)
        return result


def load_inventory(root: Path) -> Inventory:
    layers = load_layers(root)
    cluster = load_cluster(root, layers)
    for layer in layers.values():
        for i, bname in enumerate(layer.bases):
            if bname not in cluster.bases:
                raise ConfigError(f"{layer.shown}/layer.yaml: bases[{i}]: no base named "
                                  f"{bname!r} (known: {known_list(cluster.bases)})"
                                  f"{suggest(bname, cluster.bases)}")
    profiles = {host: load_profile(root, host, cluster, layers) for host in cluster.nodes}
    extra = sorted(
        p.stem for p in (root / "profiles").glob("*.yaml")
        if p.name != "cluster.yaml" and p.stem not in cluster.nodes
    )
    if extra:
        name = extra[0]
        raise ConfigError(
            f"profiles/{name}.yaml: host '{name}' is not in {CLUSTER_FILE} nodes "
            f"(known: {known_list(cluster.nodes)}); add it to nodes or remove the file"
        )
    inv = Inventory(root=root, cluster=cluster, layers=MappingProxyType(layers),
                    profiles=MappingProxyType(profiles))
    check_lanmain_pair(inv)
    check_vars(inv)
    check_lanmain(inv)
    return inv


def load_cluster(root: Path, layers: Mapping[str, Layer]) -> Cluster:
    shown = CLUSTER_FILE
    top = Reader(load_yaml(root / shown, shown), shown, "",
                 ["cluster", "networks", "nodes", "vars", "bases"])
    c = top.child("cluster", ["name", "domain", "timezone", "mirror", "admin", "base",
                              "secrets_dir"])
    name = hostname(c.text("name", hint="name the cluster, e.g. name: rpi-cluster"),
                    c.loc("name"))
    domain = c.text("domain", hint="set the DNS domain, e.g. domain: cluster.lan")
    if not all(re.match(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", part) for part in domain.split(".")):
        raise ConfigError(f"{c.loc('domain')}: {domain!r} is not a DNS domain; write it like "
                          "cluster.lan")
    timezone = c.text("timezone", "Etc/UTC")
    if not re.match(r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$", timezone):
        raise ConfigError(f"{c.loc('timezone')}: {timezone!r} is not a time zone name; write it "
                          "like Europe/Berlin or Etc/UTC")
    mirror = c.opt_str("mirror")
    if mirror is not None and not re.match(r"^(https?|file)://\S+$", mirror):
        raise ConfigError(f"{c.loc('mirror')}: {mirror!r} is not an http(s) or file URL")
    a = c.child("admin", ["user", "ssh_authorized_keys"])
    user = a.text("user", "admin")
    if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", user) or user == "root":
        raise ConfigError(f"{a.loc('user')}: {user!r} is not a valid login name; use lower-case "
                          "letters, digits, '_' or '-' (not root)")
    keys = a.str_list("ssh_authorized_keys")
    for i, key in enumerate(keys):
        if not SSH_KEY_RE.match(key.strip()):
            raise ConfigError(f"{a.loc('ssh_authorized_keys')}[{i}]: {short(key)} is not an "
                              "OpenSSH public key; paste one line of a .pub file")
    admin = Admin(user, tuple(k.strip() for k in keys))

    networks = _networks(top)
    nodes = _nodes(top, networks)
    all_vars = {k for layer in layers.values() for k in layer.defaults}
    cvars = dict(top.mapping("vars"))
    for key in cvars:
        if key not in all_vars:
            raise ConfigError(
                f"{shown}: vars.{key}: no layer declares this variable"
                f"{suggest(str(key), all_vars)}; declare it in a layer's defaults.yaml"
            )
    bases = dict(CATALOG)
    for bname, spec in top.mapping("bases").items():
        bases[str(bname)] = _user_base(top, str(bname), spec, root)
    base = c.text("base", DEFAULT_BASE)
    if base not in bases:
        raise ConfigError(f"{c.loc('base')}: no base named {base!r} (known: "
                          f"{known_list(bases)}){suggest(base, bases)}")
    return Cluster(name=name, domain=domain, timezone=timezone, mirror=mirror, admin=admin,
                   networks=MappingProxyType(networks), nodes=MappingProxyType(nodes),
                   vars=MappingProxyType(cvars), bases=MappingProxyType(bases), base=base,
                   secrets_dir=c.opt_str("secrets_dir"))


def _networks(top: Reader) -> dict[str, Network]:
    raw = top.mapping("networks")
    if not raw:
        raise ConfigError(f"{top.loc('networks')}: missing; describe at least one network, e.g. "
                          "dmz: {cidr: 10.20.0.0/24, gateway: 10.20.0.1}")
    result = {}
    for name, spec in raw.items():
        hostname(name, f"{top.shown}: networks.{name}")
        r = Reader(spec, top.shown, f"networks.{name}", ["cidr", "gateway", "dns"])
        net = cidr(r.required("cidr", "add cidr: like 10.20.0.0/24"), r.loc("cidr"))
        gw = ipv4(r.required("gateway", "add gateway: the router's address"), r.loc("gateway"))
        if gw not in net:
            raise ConfigError(f"{r.loc('gateway')}: {gw} is outside {net}; use an address in "
                              "the network")
        dns_raw = r.raw("dns", [str(gw)])
        if not isinstance(dns_raw, list):
            raise ConfigError(f"{r.loc('dns')}: expected a list of addresses, got "
                              f"{short(dns_raw)}")
        dns = tuple(ipv4(d, f"{r.loc('dns')}[{i}]") for i, d in enumerate(dns_raw))
        result[str(name)] = Network(str(name), net, gw, dns)
    return result


def _nodes(top: Reader, networks: Mapping[str, Network]) -> dict[str, Node]:
    raw = top.mapping("nodes")
    if not raw:
        raise ConfigError(f"{top.loc('nodes')}: missing; list the cluster's hosts, e.g. "
                          "compute-01: {model: pi3, network: dmz, ip: 10.20.0.31}")
    result: dict[str, Node] = {}
    seen_ip: dict[ipaddress.IPv4Address, str] = {}
    seen_mac: dict[str, str] = {}
    for host, spec in raw.items():
        where = f"nodes.{host}"
        hostname(host, f"{top.shown}: {where}")
        r = Reader(spec, top.shown, where, ["model", "network", "ip", "mac"])
        model_s = r.text("model", hint="set the Pi model: " + known_list(Model))
        if model_s not in Model.__members__:
            raise ConfigError(f"{r.loc('model')}: unknown model {model_s!r} (known: "
                              f"{known_list(Model)}){suggest(model_s, Model.__members__)}")
        net_name = r.text("network", hint="name one of networks: " + known_list(networks))
        if net_name not in networks:
            raise ConfigError(f"{r.loc('network')}: no network named {net_name!r} (known: "
                              f"{known_list(networks)}){suggest(net_name, networks)}")
        ip = ipv4(r.required("ip", "give the node its static address"), r.loc("ip"))
        net = networks[net_name]
        if ip not in net.cidr or ip in (net.cidr.network_address, net.cidr.broadcast_address):
            raise ConfigError(f"{r.loc('ip')}: {ip} is not a host address of network "
                              f"{net_name} ({net.cidr}); pick one inside it")
        if ip == net.gateway:
            raise ConfigError(f"{r.loc('ip')}: {ip} is the gateway of {net_name}; pick another")
        if ip in seen_ip:
            raise ConfigError(f"{r.loc('ip')}: {ip} is already the address of {seen_ip[ip]}; "
                              "every node needs its own")
        seen_ip[ip] = str(host)
        mac_v = mac(r.raw("mac"), r.loc("mac")) if r.raw("mac") is not None else None
        if mac_v is not None:
            if mac_v in seen_mac:
                raise ConfigError(f"{r.loc('mac')}: {mac_v} is already the MAC of "
                                  f"{seen_mac[mac_v]}; every node needs its own")
            seen_mac[mac_v] = str(host)
        result[str(host)] = Node(str(host), Model(model_s), net_name, ip, mac_v)
    return result


def _user_base(top: Reader, name: str, spec: Any, root: Path) -> Base:
    r = Reader(spec, top.shown, f"bases.{name}",
               ["url", "path", "sha256", "arch", "suite", "description", "boot_mount",
                "network"])
    if name in CATALOG:
        raise ConfigError(f"{r.loc()}: '{name}' is a built-in base; choose another name")
    url = r.opt_str("url")
    path = r.opt_str("path")
    if (url is None) == (path is None):
        raise ConfigError(f"{r.loc()}: give exactly one of url: or path:")
    if path is not None:
        p = Path(path) if Path(path).is_absolute() else root / path
        url = p.resolve().as_uri()
    sha = r.text("sha256", hint="add the image file's sha256 (sha256sum FILE)")
    if not SHA256_RE.match(sha):
        raise ConfigError(f"{r.loc('sha256')}: {short(sha)} is not a sha256 (64 hex digits)")
    arch = r.text("arch", hint="set arch: armhf, armel or arm64")
    if arch not in ("armel", "armhf", "arm64"):
        raise ConfigError(f"{r.loc('arch')}: unknown arch {arch!r} (known: arm64, armel, armhf)"
                          f"{suggest(arch, ['armel', 'armhf', 'arm64'])}")
    suite = r.text("suite", hint="set the Debian release the image is based on, e.g. bookworm")
    network = r.text("network", "networkd" if suite != "stretch" else "dhcpcd")
    if network not in ("networkd", "dhcpcd", "networkmanager"):
        raise ConfigError(f"{r.loc('network')}: unknown network stack {network!r} (known: "
                          "dhcpcd, networkd, networkmanager)")
    return Base(
        name=name, kind=BaseKind.image, suite=suite, description=r.text("description", name),
        url=url, sha256=sha, arch=arch, boot_mount=r.text("boot_mount", "/boot/firmware"),
        network=network, fs_compat="stretch" if suite in ("stretch", "jessie") else "bookworm",
    )


def load_profile(root: Path, host: str, cluster: Cluster, layers: Mapping[str, Layer]) -> Profile:
    shown = f"profiles/{host}.yaml"
    if not (root / shown).exists() and not (root / shown).is_symlink():
        raise ConfigError(f"{shown}: missing; every node in {CLUSTER_FILE} needs a profile "
                          "(base, layers, vars)")
    r = Reader(load_yaml(root / shown, shown), shown, "", ["base", "layers", "vars"])
    base_name = r.text("base", cluster.base)
    if base_name not in cluster.bases:
        raise ConfigError(f"{shown}: base: no base named {base_name!r} (known: "
                          f"{known_list(cluster.bases)}){suggest(base_name, cluster.bases)}")
    base = cluster.bases[base_name]
    node = cluster.nodes[host]
    if not base.supports(node.model):
        where = f"{shown}: base" if r.raw("base") is not None else f"{CLUSTER_FILE}: cluster.base"
        raise ConfigError(f"{where}: {base_name} ({base.arch}) does not run on a "
                          f"{node.model} ({CLUSTER_FILE} nodes.{host}.model); pick another base")
    names = r.str_list("layers")
    if not names:
        raise ConfigError(f"{shown}: layers: missing; list the layers in order, e.g. "
                          "layers: [base, compute]")
    for i, lname in enumerate(names):
        if lname not in layers:
            raise ConfigError(f"{shown}: layers[{i}]: no layer named {lname!r} (known: "
                              f"{known_list(layers)}){suggest(lname, layers)}")
        if lname in names[:i]:
            raise ConfigError(f"{shown}: layers[{i}]: {lname!r} is listed twice; keep one")
        for req in layers[lname].requires:
            if req not in names[:i]:
                raise ConfigError(f"{shown}: layers[{i}]: {lname!r} requires {req!r} before "
                                  f"it; add it earlier in layers")
        only = layers[lname].bases
        if only and base_name not in only:
            raise ConfigError(f"{shown}: layers[{i}]: {lname!r} works on base "
                              f"{' or '.join(only)} only ({layers[lname].shown}/layer.yaml "
                              f"bases:), not {base_name}; give this host base: "
                              f"{only[0]}, or drop the layer")
    declared = {k for lname in names for k in layers[lname].defaults}
    hvars = dict(r.mapping("vars"))
    for key in hvars:
        if key not in declared:
            owner = next((lay.name for lay in layers.values() if key in lay.defaults), None)
            hint = (f"; it belongs to layer '{owner}', which this profile does not select"
                    if owner else f"{suggest(str(key), declared)}")
            raise ConfigError(f"{shown}: vars.{key}: no selected layer declares this variable"
                              f"{hint}")
    return Profile(host=host, shown=shown, base=base, layers=names,
                   vars=MappingProxyType(hvars))
