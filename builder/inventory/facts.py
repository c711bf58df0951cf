"""Role facts derived from the inventory: the lanmain pair.

The lanmain layer runs as a pair (DHCP in high availability, BIND
primary/secondary, chrony peers). Which hosts form it is not written twice:
it is the two hosts whose profile selects the layer, and ``lanmain_primary``
names the primary. ``check_lanmain`` verifies the pair when the inventory is
loaded; ``lanmain_context`` is what the layer's templates see as ``lanmain``.
"""

from __future__ import annotations

import ipaddress
import os
import time
from typing import TYPE_CHECKING, Any

from builder.errors import ConfigError
from builder.inventory.schema import known_list, short
from builder.inventory.vartypes import VarType

if TYPE_CHECKING:
    from builder.inventory.config import Inventory

LAYER = "lanmain"
DHCP_SERVERS = ("kea", "isc-dhcp")
# Kea's hooks live in the multiarch library folder of the image's architecture.
MULTIARCH = {"arm64": "aarch64-linux-gnu", "armhf": "arm-linux-gnueabihf",
             "armel": "arm-linux-gnueabi"}
TSIG_KEY_NAME = "pibake-xfer"
HA_USER = "pibake-ha"
# The secrets the pair shares; an image of either host carries them.


def pair(inv: Inventory) -> list[str]:
    return inv.groups().get(LAYER, [])


def check_lanmain_pair(inv: Inventory) -> None:
    """Exactly two hosts on one network (checked before the typed vars, which
    are checked against each host's network)."""
    hosts = pair(inv)
    if not hosts:
        return
    if len(hosts) != 2:
        first = inv.profiles[hosts[0]].shown
        fix = ("add lanmain to a second host's layers" if len(hosts) == 1
               else "keep it in exactly two profiles")
        raise ConfigError(f"{first}: layers: the lanmain layer runs as a pair (DHCP HA, DNS "
                          f"primary/secondary) but {len(hosts)} host(s) select it "
                          f"({', '.join(hosts)}); {fix}")
    a, b = hosts
    na, nb = inv.node(a), inv.node(b)
    if na.network != nb.network:
        raise ConfigError(f"profiles/cluster.yaml: nodes.{b}.network: {nb.network!r}: the "
                          f"lanmain pair must share one network and {a} is on {na.network!r}; "
                          f"put both on one network")


def check_lanmain(inv: Inventory) -> None:
    """One primary of the pair, one set of shared values, a DHCP server the base has."""
    hosts = pair(inv)
    if not hosts:
        return
    a, b = hosts
    va, vb = inv.host_vars(a), inv.host_vars(b)
    for key in sorted(inv.layers[LAYER].defaults):
        if va.get(key) != vb.get(key):
            raise ConfigError(
                f"{inv.var_origin(b, key)}: {short(vb.get(key))} differs from {a}'s "
                f"{short(va.get(key))} ({inv.var_origin(a, key)}); the pair must share it: "
                "set it once in profiles/cluster.yaml vars")
    primary = va.get("lanmain_primary")
    if primary not in hosts:
        raise ConfigError(f"{inv.var_origin(a, 'lanmain_primary')}: {short(primary)} is not one "
                          f"of the lanmain pair (known: {known_list(hosts)}); name the primary")
    server = va.get("lanmain_dhcp_server")
    if server not in DHCP_SERVERS:
        raise ConfigError(f"{inv.var_origin(a, 'lanmain_dhcp_server')}: {short(server)} is not "
                          f"a DHCP server choice (known: {known_list(DHCP_SERVERS)})")
    for host in hosts:
        base = inv.profile(host).base
        if server == "kea" and base.suite == "stretch":
            raise ConfigError(f"{inv.var_origin(host, 'lanmain_dhcp_server')}: 'kea' on "
                              f"{host}'s base {base.name} (stretch), whose Kea has no HA hook; "
                              "set lanmain_dhcp_server: isc-dhcp for this pair")


def zone_serial() -> int:
    """$SOURCE_DATE_EPOCH (a build pins it to the last commit's time, so a rebuild
    is identical), else now: a newer image publishes a higher serial; the
    first-boot guard covers an older image and an edit made without a commit."""
    return int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())


def _view(inv: Inventory, host: str) -> dict[str, str]:
    node = inv.node(host)
    return {"name": host, "ip": str(node.ip), "fqdn": f"{host}.{inv.cluster.domain}"}


def _floating(inv: Inventory) -> dict[str, str]:
    """Every ipv4_floating var's value, named after the var (compute_floating_ip ->
    compute-floating-ip), so the zone gives each shared address a name."""
    result: dict[str, str] = {}
    for host, profile in inv.profiles.items():
        merged = inv.host_vars(host)
        for name in profile.layers:
            for key, tname in inv.layers[name].types.items():
                if tname == VarType.ipv4_floating and merged.get(key):
                    result[key.replace("_", "-")] = str(merged[key])
    return dict(sorted(result.items()))


def reverse_zone(addrs: list[ipaddress.IPv4Address]) -> tuple[str, int]:
    """The smallest whole-octet in-addr.arpa zone holding every address, and
    how many leading octets it fixes (10.20.0.11 + 10.10.0.10 -> 10.in-addr.arpa, 1)."""
    octets = [str(a).split(".") for a in addrs]
    fixed = 0
    while fixed < 3 and len({tuple(o[: fixed + 1]) for o in octets}) == 1:
        fixed += 1
    fixed = max(fixed, 1)
    return ".".join(reversed(octets[0][:fixed])) + ".in-addr.arpa", fixed


def lanmain_context(inv: Inventory, host: str) -> dict[str, Any]:
    """What the lanmain templates see as ``lanmain``."""
    vars = inv.host_vars(host)
    hosts = pair(inv)
    primary_name = vars["lanmain_primary"]
    secondary_name = next(h for h in hosts if h != primary_name)
    primary, secondary = _view(inv, primary_name), _view(inv, secondary_name)
    me = primary if host == primary_name else secondary
    peer = secondary if me is primary else primary
    net = inv.network(host)
    first, last = (p.strip() for p in str(vars["lanmain_dhcp_range"]).split(","))
    domain = inv.cluster.domain

    records = [("@", "NS", f"{primary_name}.{domain}."), ("@", "NS", f"{secondary_name}.{domain}.")]
    records += [(n.name, "A", str(n.ip)) for n in inv.cluster.nodes.values()]
    floating = _floating(inv)
    records += [(name, "A", ip) for name, ip in floating.items()]
    addrs = [n.ip for n in inv.cluster.nodes.values()]
    rzone, fixed = reverse_zone(addrs)
    ptrs = [(".".join(reversed(str(n.ip).split(".")[fixed:])), f"{n.name}.{domain}.")
            for n in inv.cluster.nodes.values()]
    arch = inv.profile(host).base.arch_for(inv.node(host).model)
    return {
        "role": "primary" if me is primary else "secondary",
        "me": me, "peer": peer, "primary": primary, "secondary": secondary,
        "dhcp_server": vars["lanmain_dhcp_server"],
        "network": {"name": net.name, "cidr": str(net.cidr),
                    "address": str(net.cidr.network_address),
                    "netmask": str(net.cidr.netmask), "gateway": str(net.gateway)},
        "pool_first": first, "pool_last": last,
        "reservations": [{"name": n.name, "mac": n.mac, "ip": str(n.ip)}
                         for n in inv.cluster.nodes.values()
                         if n.mac and n.network == net.name],
        "servers": [primary["ip"], secondary["ip"]],
        "client_networks": [str(n.cidr) for n in inv.cluster.networks.values()],
        "kea_hooks_dir": f"/usr/lib/{MULTIARCH[arch]}/kea/hooks",
        # the keys' values come from the secrets store (layer.yaml secrets:)
        "tsig": {"name": TSIG_KEY_NAME, "algorithm": "hmac-sha256"},
        "ha": {"user": HA_USER},
        "omapi": {"name": "omapi_key", "algorithm": "hmac-sha256"},
        "serial": zone_serial(),
        "forward": {"zone": domain, "records": records},
        "reverse": {"zone": rzone, "records": ptrs},
        "zones": [domain, rzone],
    }
