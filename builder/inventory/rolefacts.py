"""Cluster-wide facts of the role layers, derived from the inventory once.

Which compute nodes are frontends and backends, who holds the floating IP
first, which nodes manage the Docker swarm and which one may create it, which
node serves NFS and to whom. Templates read these as ``roles`` (see
``role_view``) instead of filtering ``nodes`` themselves, and every
inconsistency stops the plan with one line naming the file, the key, the value
and the fix, e.g.
``profiles/cluster.yaml: vars.compute_floating_ip: '10.20.0.31' is the address
of compute-01; pick a free address in 10.20.0.0/24``.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from builder.errors import ConfigError
from builder.inventory.config import Inventory
from builder.inventory.schema import known_list, short

TIERS = ("backend", "frontend")
SWARM_ROLES = ("manager", "worker")
# Export options exportfs(8) knows; anything else would stop nfs-server at boot.
NFS_OPTIONS = {
    "rw", "ro", "sync", "async", "secure", "insecure", "wdelay", "no_wdelay", "hide",
    "nohide", "crossmnt", "subtree_check", "no_subtree_check", "insecure_locks",
    "secure_locks", "no_auth_nlm", "auth_nlm", "root_squash", "no_root_squash",
    "all_squash", "no_all_squash",
}
NFS_VALUED_OPTIONS = ("anonuid", "anongid", "fsid", "sec", "mountpoint", "mp", "refer",
                      "replicas")


@dataclass(frozen=True)
class ComputeFacts:
    frontends: tuple[str, ...]           # inventory order
    backends: tuple[str, ...]
    floating_ip: ipaddress.IPv4Address | None
    priorities: Mapping[str, int]        # frontend -> VRRP priority
    router_id: int
    managers: tuple[str, ...]
    workers: tuple[str, ...]
    bootstrap: str | None                # the one manager that may run `swarm init`


@dataclass(frozen=True)
class NfsFacts:
    server: str | None                   # the lanmisc node, None without one
    export: str
    options: str
    clients: tuple[str, ...]             # compute nodes, the only ones allowed


@dataclass(frozen=True)
class ClusterRoles:
    compute: ComputeFacts
    nfs: NfsFacts
    lanmain: tuple[str, ...]             # the NTP/DNS/DHCP pair


def _group(inv: Inventory, layer: str) -> list[str]:
    return list(inv.groups().get(layer, []))


def _var(inv: Inventory, host: str, key: str, default: Any = None) -> Any:
    return inv.host_vars(host).get(key, default)


def _fail(inv: Inventory, host: str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{inv.var_origin(host, key)}: {short(value)} {why}")


def _int(inv: Inventory, host: str, key: str, low: int, high: int) -> int:
    value = _var(inv, host, key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(inv, host, key, value, f"is not a number from {low} to {high}")
    return value


def _choice(inv: Inventory, host: str, key: str, known: Sequence[str]) -> str:
    value = _var(inv, host, key)
    if value not in known:
        raise _fail(inv, host, key, value, f"is not one of: {known_list(known)}")
    return str(value)


def dhcp_pool(inv: Inventory) -> tuple[str, ipaddress.IPv4Address, ipaddress.IPv4Address] | None:
    """The lanmain pair's DHCP pool as (owning host, first, last), when one is set
    in the "first,last" form; the lanmain layer itself checks the value's form."""
    for host in _group(inv, "lanmain"):
        raw = _var(inv, host, "lanmain_dhcp_range")
        if not isinstance(raw, str) or raw.count(",") != 1:
            continue
        try:
            first, last = (ipaddress.IPv4Address(p.strip()) for p in raw.split(","))
        except ValueError:
            continue
        return host, first, last
    return None


def compute_facts(inv: Inventory) -> ComputeFacts:
    hosts = _group(inv, "compute")
    frontends: list[str] = []
    backends: list[str] = []
    for host in hosts:
        tier = _choice(inv, host, "compute_tier", TIERS)
        (frontends if tier == "frontend" else backends).append(host)
    floating = _floating_ip(inv, hosts, frontends)
    priorities: dict[str, int] = {}
    router_id = 0
    if hosts:
        router_id = _int(inv, hosts[0], "compute_keepalived_router_id", 1, 255)
        for host in hosts[1:]:
            other = _int(inv, host, "compute_keepalived_router_id", 1, 255)
            if other != router_id:
                raise _fail(inv, host, "compute_keepalived_router_id", other,
                            f"differs from {hosts[0]}'s {router_id}; the frontends share one "
                            "VRRP router id, set it once in profiles/cluster.yaml vars")
    if floating is not None:
        for host in frontends:
            prio = _int(inv, host, "compute_keepalived_priority", 1, 254)
            for holder, seen in priorities.items():
                if seen == prio:
                    raise _fail(inv, host, "compute_keepalived_priority", prio,
                                f"is also {holder}'s priority; give each frontend its own so "
                                "one is clearly first")
            priorities[host] = prio
    managers = [h for h in hosts if _choice(inv, h, "compute_swarm_role", SWARM_ROLES)
                == "manager"]
    workers = [h for h in hosts if h not in managers]
    bootstrap = _swarm_bootstrap(inv, hosts, managers)
    return ComputeFacts(tuple(frontends), tuple(backends), floating, priorities, router_id,
                        tuple(managers), tuple(workers), bootstrap)


def _floating_ip(inv: Inventory, hosts: list[str],
                 frontends: list[str]) -> ipaddress.IPv4Address | None:
    if not hosts:
        return None
    key = "compute_floating_ip"
    value = _var(inv, hosts[0], key)
    for host in hosts[1:]:
        if _var(inv, host, key) != value:
            raise _fail(inv, host, key, _var(inv, host, key),
                        f"differs from {hosts[0]}'s {short(value)}; the compute nodes share one "
                        "floating IP, set it once in profiles/cluster.yaml vars")
    if value in ("", None):
        if frontends:
            raise _fail(inv, frontends[0], key, value,
                        "is empty but the compute tier has frontends; set the floating IP "
                        "keepalived moves between them")
        return None
    # its form, network, and that no node, gateway or DHCP pool holds it: the
    # ipv4_floating type in layers/compute/layer.yaml has checked that already
    ip = ipaddress.IPv4Address(value)
    if len(frontends) != 2:
        host = frontends[0] if frontends else hosts[0]
        raise _fail(inv, host, "compute_tier", _var(inv, host, "compute_tier"),
                    f"leaves {len(frontends)} frontends ({', '.join(frontends) or 'none'}); "
                    "the floating IP needs exactly two, set compute_tier: frontend on two "
                    "compute nodes")
    net = inv.network(frontends[0])
    other_net = inv.network(frontends[1])
    if other_net.name != net.name:
        raise _fail(inv, frontends[1], "compute_tier", "frontend",
                    f"puts {frontends[1]} ({other_net.name}) and {frontends[0]} ({net.name}) "
                    "on different networks; VRRP needs both frontends on one network")
    return ip


def _swarm_bootstrap(inv: Inventory, hosts: list[str], managers: list[str]) -> str | None:
    if not hosts:
        return None
    key = "compute_swarm_role"
    if len(managers) % 2 == 0:
        host = managers[-1] if managers else hosts[0]
        raise _fail(inv, host, key, _var(inv, host, key),
                    f"makes {len(managers)} swarm managers ({', '.join(managers) or 'none'}); "
                    "the Raft quorum needs an odd number (1, 3 or 5), change one node's "
                    "compute_swarm_role")
    chosen = [h for h in hosts if _var(inv, h, "compute_swarm_bootstrap") is True]
    for host in hosts:
        flag = _var(inv, host, "compute_swarm_bootstrap")
        if not isinstance(flag, bool):
            raise _fail(inv, host, "compute_swarm_bootstrap", flag, "is not true or false")
    if len(chosen) != 1:
        host = chosen[-1] if chosen else managers[0]
        raise _fail(inv, host, "compute_swarm_bootstrap", _var(inv, host,
                    "compute_swarm_bootstrap"),
                    f"leaves {len(chosen)} nodes allowed to create the swarm "
                    f"({', '.join(chosen) or 'none'}); set it true on exactly one manager")
    if chosen[0] not in managers:
        raise _fail(inv, chosen[0], "compute_swarm_bootstrap", True,
                    f"is set on {chosen[0]}, a worker; only a manager can create the swarm, "
                    "set compute_swarm_role: manager there or move the flag")
    return chosen[0]


def nfs_facts(inv: Inventory) -> NfsFacts:
    servers = _group(inv, "lanmisc")
    clients = tuple(_group(inv, "compute"))
    if not servers:
        if clients:
            raise ConfigError(f"{inv.profile(clients[0]).shown}: layers: compute nodes mount "
                              "lanmisc's NFS export, but no profile selects lanmisc; add a "
                              "lanmisc node to the cluster")
        return NfsFacts(None, "", "", clients)
    if len(servers) > 1:
        raise ConfigError(f"{inv.profile(servers[1]).shown}: layers: a second lanmisc node "
                          f"({', '.join(servers)}); the compute nodes mount one NFS server, "
                          "select lanmisc on one node only")
    server = servers[0]
    export = _var(inv, server, "lanmisc_nfs_export")
    if (not isinstance(export, str) or not export.startswith("/") or export == "/"
            or posixpath.normpath(export) != export or re.search(r"\s", export)):
        raise _fail(inv, server, "lanmisc_nfs_export", export,
                    "is not an absolute folder path (no spaces, no '..', not /); "
                    "write it like /srv/nfs/share")
    options = _var(inv, server, "lanmisc_nfs_options")
    if not isinstance(options, str) or not options:
        raise _fail(inv, server, "lanmisc_nfs_options", options,
                    "is not a comma-separated option list; write it like rw,sync,no_subtree_check")
    for opt in options.split(","):
        name = opt.split("=", 1)[0]
        if not (opt in NFS_OPTIONS or ("=" in opt and name in NFS_VALUED_OPTIONS)):
            raise _fail(inv, server, "lanmisc_nfs_options", options,
                        f"has {opt!r}, which exportfs does not know; see exports(5), e.g. "
                        "rw,sync,no_subtree_check,root_squash")
    return NfsFacts(server, export, options, clients)


def cluster_roles(inv: Inventory) -> ClusterRoles:
    """Every cross-node fact of the roles; the first inconsistency raises ConfigError."""
    return ClusterRoles(compute=compute_facts(inv), nfs=nfs_facts(inv),
                        lanmain=tuple(_group(inv, "lanmain")))


def role_view(inv: Inventory) -> dict[str, Any]:
    """``roles`` as templates see it: names and addresses as plain strings."""
    facts = cluster_roles(inv)
    c, nfs = facts.compute, facts.nfs

    def ips(hosts: Sequence[str]) -> list[str]:
        return [str(inv.node(h).ip) for h in hosts]

    return {
        "compute": {
            "frontends": list(c.frontends), "frontend_ips": ips(c.frontends),
            "backends": list(c.backends), "backend_ips": ips(c.backends),
            "floating_ip": str(c.floating_ip) if c.floating_ip else "",
            "priorities": dict(c.priorities), "router_id": c.router_id,
            "managers": list(c.managers), "manager_ips": ips(c.managers),
            "workers": list(c.workers), "bootstrap": c.bootstrap or "",
            "http_port": _var(inv, c.frontends[0], "compute_http_port") if c.frontends else 0,
        },
        "nfs": {
            "server": nfs.server or "",
            "server_ip": str(inv.node(nfs.server).ip) if nfs.server else "",
            "export": nfs.export, "options": nfs.options,
            "clients": list(nfs.clients), "client_ips": ips(nfs.clients),
        },
        "lanmain": {"hosts": list(facts.lanmain), "ips": ips(facts.lanmain)},
    }
