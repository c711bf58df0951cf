"""Typed layer variables: ``types:`` in layer.yaml declares what a var holds.

    # layers/lanmain/layer.yaml
    types:
      lanmain_dhcp_range: ipv4_range     # "first,last" inside the host's network
      lanmain_dns_forwarders: ipv4_list
      lanmain_primary: node              # a node of profiles/cluster.yaml

Every host's merged value of a typed var is checked once, when the inventory
is loaded, against that host's network and the rest of the inventory: an
address must be a valid host address of the network, and a floating IP or a
DHCP pool must not take the gateway, a node's address, another floating IP or
another pool. Each mistake is one line naming where the value is set (host
file, cluster.yaml or layer default), the value and the fix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from builder.errors import ConfigError
from builder.inventory.schema import HOSTNAME_RE, Reader, known_list, short, suggest

if TYPE_CHECKING:
    from builder.inventory.config import Inventory, Network

Addr = ipaddress.IPv4Address


class VarType(StrEnum):
    ipv4 = "ipv4"                    # one address inside the host's network
    ipv4_list = "ipv4_list"          # a list of addresses (anywhere: upstream servers)
    ipv4_floating = "ipv4_floating"  # a shared address no node, gateway or pool holds; "": none
    ipv4_range = "ipv4_range"        # "first,last": a DHCP pool inside the host's network
    cidr = "cidr"                    # a network like 10.20.0.0/24
    port = "port"                    # 1-65535
    hostname = "hostname"            # a DNS label or name
    node = "node"                    # the name of a node in profiles/cluster.yaml


def load_types(meta: Reader, defaults: Mapping[str, Any]) -> dict[str, str]:
    """``types:`` of one layer.yaml: each key a var of this layer, each value a known type."""
    result = {}
    for key, value in meta.mapping("types").items():
        loc = meta.loc(f"types.{key}")
        if key not in defaults:
            raise ConfigError(f"{loc}: not a variable of this layer's defaults.yaml"
                              f"{suggest(str(key), defaults)}; declare it there first")
        if value not in VarType.__members__:
            raise ConfigError(f"{loc}: unknown type {short(value)} (known: {known_list(VarType)})"
                              f"{suggest(str(value), VarType.__members__)}")
        result[str(key)] = str(value)
    return result


@dataclass(frozen=True)
class _Ctx:
    where: str            # "profiles/cluster.yaml: vars.lanmain_dhcp_range"
    host: str
    net: Network


def _fail(ctx: _Ctx, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{ctx.where}: {short(value)} {why}")


def _addr(ctx: _Ctx, value: Any) -> Addr:
    try:
        return ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise _fail(ctx, value, "is not an IPv4 address; write it like 10.20.0.11") from None


def _host_addr(ctx: _Ctx, value: Any, addr: Addr) -> Addr:
    net = ctx.net.cidr
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise _fail(ctx, value, f"is not a host address of {ctx.host}'s network "
                                f"{ctx.net.name} ({net}); pick one inside it")
    return addr


def parse_range(ctx: _Ctx, value: Any) -> tuple[Addr, Addr]:
    if not isinstance(value, str) or value.count(",") != 1:
        raise _fail(ctx, value, "is not an address range; write it as \"first,last\", like "
                                "\"10.20.0.100,10.20.0.199\"")
    first_s, last_s = (p.strip() for p in value.split(","))
    first = _host_addr(ctx, value, _addr(ctx, first_s))
    last = _host_addr(ctx, value, _addr(ctx, last_s))
    if int(last) < int(first):
        raise _fail(ctx, value, f"ends before it starts; write it as \"{last},{first}\"")
    return first, last


def _check_one(ctx: _Ctx, vtype: VarType, value: Any) -> None:
    if vtype is VarType.ipv4:
        _host_addr(ctx, value, _addr(ctx, value))
    elif vtype is VarType.ipv4_floating:
        addr = _host_addr(ctx, value, _addr(ctx, value))
        if addr == ctx.net.gateway:
            raise _fail(ctx, value, f"is the gateway of {ctx.net.name}; pick a free address")
    elif vtype is VarType.ipv4_list:
        if not isinstance(value, list) or not value:
            raise _fail(ctx, value, "is not a list of IPv4 addresses; write it like "
                                    "[10.20.0.1]")
        for item in value:
            _addr(ctx, item)
    elif vtype is VarType.ipv4_range:
        first, last = parse_range(ctx, value)
        if int(first) <= int(ctx.net.gateway) <= int(last):
            raise _fail(ctx, value, f"contains the gateway {ctx.net.gateway} of "
                                    f"{ctx.net.name}; start the range after it")
    elif vtype is VarType.cidr:
        try:
            ipaddress.IPv4Network(value, strict=True)
        except (ValueError, TypeError):
            raise _fail(ctx, value, "is not a network in CIDR form; write it like "
                                    "10.20.0.0/24") from None
    elif vtype is VarType.port:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise _fail(ctx, value, "is not a port; use a number from 1 to 65535")
    elif vtype in (VarType.hostname, VarType.node) and (
            not isinstance(value, str) or not all(HOSTNAME_RE.match(p) for p in value.split("."))):
        raise _fail(ctx, value, "is not a host name; use lower-case letters, digits, '-' "
                                    "and '.'")


def check_vars(inv: Inventory) -> None:
    """Check every host's typed vars, then the collisions between addresses."""
    floating: dict[Addr, tuple[str, str]] = {}       # addr -> (var, where)
    pools: list[tuple[Addr, Addr, str, str]] = []     # first, last, where, host
    for host, profile in inv.profiles.items():
        merged = inv.host_vars(host)
        types = {k: t for name in profile.layers for k, t in inv.layers[name].types.items()}
        for key, tname in sorted(types.items()):
            ctx = _Ctx(inv.var_origin(host, key), host, inv.network(host))
            value = merged.get(key)
            if value is None:
                raise ConfigError(f"{ctx.where}: missing; set it in profiles/cluster.yaml vars "
                                  f"(a {tname}) for {host}")
            vtype = VarType(tname)
            if vtype is VarType.ipv4_floating and value == "":
                continue  # no floating IP
            _check_one(ctx, vtype, value)
            if vtype is VarType.node and value not in inv.cluster.nodes:
                raise _fail(ctx, value, f"is not a node of profiles/cluster.yaml (known: "
                                        f"{known_list(inv.cluster.nodes)})"
                                        f"{suggest(str(value), inv.cluster.nodes)}")
            if vtype is VarType.ipv4_floating:
                addr = Addr(value)
                for node in inv.cluster.nodes.values():
                    if node.ip == addr:
                        raise _fail(ctx, value, f"is the address of node {node.name}; a "
                                                "floating IP needs an address no node has")
                other = floating.get(addr)
                if other is not None and other[0] != key:
                    raise _fail(ctx, value, f"is also the floating IP {other[0]} "
                                            f"({other[1]}); give each its own address")
                floating[addr] = (key, ctx.where)
            if vtype is VarType.ipv4_range:
                first, last = parse_range(ctx, value)
                for node in inv.cluster.nodes.values():
                    if int(first) <= int(node.ip) <= int(last):
                        raise _fail(ctx, value, f"contains {node.ip}, the address of node "
                                                f"{node.name}; keep node addresses outside "
                                                "the pool")
                pools.append((first, last, ctx.where, host))
    for addr, (_key, where) in sorted(floating.items()):
        for first, last, pwhere, _ in pools:
            if int(first) <= int(addr) <= int(last):
                raise ConfigError(f"{where}: '{addr}' is inside the DHCP pool set at {pwhere}; "
                                  "pick a floating IP outside the pool")
