"""A two-host lanmain project (the repo's base and lanmain layers) for tests."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent

PAIR_CLUSTER: dict[str, Any] = {
    "cluster": {"name": "pair", "domain": "pair.lan",
                "admin": {"user": "admin", "ssh_authorized_keys": []}},
    "networks": {"lan": {"cidr": "10.77.0.0/24", "gateway": "10.77.0.1",
                         "dns": ["10.77.0.11", "10.77.0.12"]}},
    "nodes": {
        "lm-a": {"model": "pi3", "network": "lan", "ip": "10.77.0.11"},
        "lm-b": {"model": "pi3", "network": "lan", "ip": "10.77.0.12"},
        "cl-1": {"model": "pi3", "network": "lan", "ip": "10.77.0.21",
                 "mac": "b8:27:eb:00:00:21"},
    },
    "vars": {"lanmain_primary": "lm-a", "lanmain_dhcp_range": "10.77.0.100,10.77.0.150",
             "lanmain_dns_forwarders": ["10.77.0.1"]},
}


def make_lanmain_project(root: Path, vars: dict[str, Any] | None = None,
                         nodes: dict[str, Any] | None = None,
                         layers: dict[str, list[str]] | None = None,
                         host_vars: dict[str, dict[str, Any]] | None = None) -> Path:
    """lm-a and lm-b select lanmain, cl-1 only base; ``vars`` merge into cluster vars."""
    cluster = copy.deepcopy(PAIR_CLUSTER)
    cluster["vars"].update(vars or {})
    if nodes is not None:
        cluster["nodes"] = nodes
    (root / "profiles").mkdir(parents=True)
    (root / "profiles/cluster.yaml").write_text(yaml.safe_dump(cluster, sort_keys=False))
    chosen = layers or {"lm-a": ["base", "lanmain"], "lm-b": ["base", "lanmain"],
                        "cl-1": ["base"]}
    for host in cluster["nodes"]:
        profile: dict[str, Any] = {"base": "debian-bookworm",
                                   "layers": chosen.get(host, ["base"])}
        if host_vars and host in host_vars:
            profile["vars"] = host_vars[host]
        (root / f"profiles/{host}.yaml").write_text(yaml.safe_dump(profile))
    for layer in ("base", "lanmain", "compute"):
        shutil.copytree(REPO / "layers" / layer, root / "layers" / layer, symlinks=True)
    return root
