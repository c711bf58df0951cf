"""Role facts of the shipped cluster and every inconsistency as one exact line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.inventory.config import load_inventory
from builder.inventory.rolefacts import cluster_roles
from tests.conftest import REPO, copy_shipped
from tests.test_config import run_cli


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    """A copy of the shipped reference cluster (profiles and layers)."""
    return copy_shipped(tmp_path / "proj")


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"fixture drifted: {old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_shipped_cluster_facts() -> None:
    facts = cluster_roles(load_inventory(REPO))
    c = facts.compute
    assert (c.frontends, c.backends) == (("compute-01", "compute-02"),
                                         ("compute-03", "compute-04"))
    assert str(c.floating_ip) == "10.20.0.30"
    assert dict(c.priorities) == {"compute-01": 150, "compute-02": 100}
    assert c.managers == ("compute-01", "compute-02", "compute-03")
    assert (c.workers, c.bootstrap, c.router_id) == (("compute-04",), "compute-01", 51)
    assert (facts.nfs.server, facts.nfs.export) == ("lanmisc-01", "/srv/nfs/share")
    assert facts.nfs.clients == ("compute-01", "compute-02", "compute-03", "compute-04")
    assert facts.lanmain == ("lanmain-01", "lanmain-02")


CASES: list[tuple[str, str, str, str, str]] = [
    # (id, file, old, new, expected error line); the address checks come from the
    # typed var (ipv4_floating), the tier's shape from rolefacts
    ("vip-outside-subnet", "profiles/cluster.yaml", "compute_floating_ip: 10.20.0.30",
     "compute_floating_ip: 10.30.0.30",
     "profiles/cluster.yaml: vars.compute_floating_ip: '10.30.0.30' is not a host address of "
     "compute-01's network dmz (10.20.0.0/24); pick one inside it"),
    ("vip-is-a-node", "profiles/cluster.yaml", "compute_floating_ip: 10.20.0.30",
     "compute_floating_ip: 10.20.0.31",
     "profiles/cluster.yaml: vars.compute_floating_ip: '10.20.0.31' is the address of node "
     "compute-01; a floating IP needs an address no node has"),
    ("vip-is-gateway", "profiles/cluster.yaml", "compute_floating_ip: 10.20.0.30",
     "compute_floating_ip: 10.20.0.1",
     "profiles/cluster.yaml: vars.compute_floating_ip: '10.20.0.1' is the gateway of dmz; "
     "pick a free address"),
    ("vip-in-dhcp-pool", "profiles/cluster.yaml", "compute_floating_ip: 10.20.0.30",
     "compute_floating_ip: 10.20.0.150",
     "profiles/cluster.yaml: vars.compute_floating_ip: '10.20.0.150' is inside the DHCP pool "
     "set at layers/lanmain/defaults.yaml: lanmain_dhcp_range; pick a floating IP outside the "
     "pool"),
    ("vip-not-an-address", "profiles/cluster.yaml", "compute_floating_ip: 10.20.0.30",
     "compute_floating_ip: 10.20.0.300",
     "profiles/cluster.yaml: vars.compute_floating_ip: '10.20.0.300' is not an IPv4 address; "
     "write it like 10.20.0.11"),
    ("vip-per-host", "profiles/compute-02.yaml", "compute_tier: frontend",
     "compute_tier: frontend\n  compute_floating_ip: 10.20.0.40",
     "profiles/compute-02.yaml: vars.compute_floating_ip: '10.20.0.40' differs from "
     "compute-01's '10.20.0.30'; the compute nodes share one floating IP, set it once in "
     "profiles/cluster.yaml vars"),
    ("one-frontend", "profiles/compute-02.yaml", "compute_tier: frontend",
     "compute_tier: backend",
     "profiles/compute-01.yaml: vars.compute_tier: 'frontend' leaves 1 frontends (compute-01); "
     "the floating IP needs exactly two, set compute_tier: frontend on two compute nodes"),
    ("three-frontends", "profiles/compute-03.yaml", "compute_tier: backend",
     "compute_tier: frontend",
     "profiles/compute-01.yaml: vars.compute_tier: 'frontend' leaves 3 frontends (compute-01, "
     "compute-02, compute-03); the floating IP needs exactly two, set compute_tier: frontend "
     "on two compute nodes"),
    ("bad-tier", "profiles/compute-03.yaml", "compute_tier: backend", "compute_tier: backnd",
     "profiles/compute-03.yaml: vars.compute_tier: 'backnd' is not one of: backend, frontend"),
    ("same-priority", "profiles/compute-02.yaml", "compute_keepalived_priority: 100",
     "compute_keepalived_priority: 150",
     "profiles/compute-02.yaml: vars.compute_keepalived_priority: 150 is also compute-01's "
     "priority; give each frontend its own so one is clearly first"),
    ("priority-range", "profiles/compute-01.yaml", "compute_keepalived_priority: 150",
     "compute_keepalived_priority: 255",
     "profiles/compute-01.yaml: vars.compute_keepalived_priority: 255 is not a number from 1 "
     "to 254"),
    ("even-managers", "profiles/compute-03.yaml", "compute_swarm_role: manager",
     "compute_swarm_role: worker",
     "profiles/compute-02.yaml: vars.compute_swarm_role: 'manager' makes 2 swarm managers "
     "(compute-01, compute-02); the Raft quorum needs an odd number (1, 3 or 5), change one "
     "node's compute_swarm_role"),
    ("two-bootstraps", "profiles/compute-02.yaml", "compute_swarm_role: manager",
     "compute_swarm_role: manager\n  compute_swarm_bootstrap: true",
     "profiles/compute-02.yaml: vars.compute_swarm_bootstrap: True leaves 2 nodes allowed to "
     "create the swarm (compute-01, compute-02); set it true on exactly one manager"),
    ("no-bootstrap", "profiles/compute-01.yaml", "compute_swarm_bootstrap: true",
     "compute_swarm_bootstrap: false",
     "profiles/compute-01.yaml: vars.compute_swarm_bootstrap: False leaves 0 nodes allowed to "
     "create the swarm (none); set it true on exactly one manager"),
    ("worker-bootstrap", "profiles/compute-04.yaml", "compute_tier: backend",
     "compute_tier: backend\n  compute_swarm_bootstrap: true",
     "profiles/compute-04.yaml: vars.compute_swarm_bootstrap: True leaves 2 nodes allowed to "
     "create the swarm (compute-01, compute-04); set it true on exactly one manager"),
    ("nfs-export-relative", "layers/lanmisc/defaults.yaml", "lanmisc_nfs_export: /srv/nfs/share",
     "lanmisc_nfs_export: srv/share",
     "layers/lanmisc/defaults.yaml: lanmisc_nfs_export: 'srv/share' is not an absolute folder "
     "path (no spaces, no '..', not /); write it like /srv/nfs/share"),
    ("nfs-option-typo", "layers/lanmisc/defaults.yaml", "rw,sync,no_subtree_check",
     "rw,snyc,no_subtree_check",
     "layers/lanmisc/defaults.yaml: lanmisc_nfs_options: 'rw,snyc,no_subtree_check,"
     "root_squash' has 'snyc', which exportfs does not know; see exports(5), e.g. "
     "rw,sync,no_subtree_check,root_squash"),
    ("no-nfs-server", "profiles/lanmisc-01.yaml", "layers: [base, lanmisc, sensehat]",
     "layers: [base, sensehat]",
     "profiles/compute-01.yaml: layers: compute nodes mount lanmisc's NFS export, but no "
     "profile selects lanmisc; add a lanmisc node to the cluster"),
    ("keepalived-lo", "profiles/cluster.yaml", "compute_floating_ip: 10.20.0.30",
     "compute_floating_ip: 10.20.0.30\n  compute_keepalived_interface: lo",
     "profiles/cluster.yaml: vars.compute_keepalived_interface: 'lo' is not a network "
     "interface name; VRRP needs the LAN NIC, e.g. eth0"),
    ("same-ports", "profiles/cluster.yaml", "compute_floating_ip: 10.20.0.30",
     "compute_floating_ip: 10.20.0.30\n  compute_backend_port: 80",
     "profiles/cluster.yaml: vars.compute_backend_port: 80 is not a port other than "
     "compute_http_port; use a number from 1 to 65535"),
]


@pytest.mark.parametrize(("file", "old", "new", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_role_fact_errors(cluster: Path, capsys: pytest.CaptureFixture[str], file: str,
                          old: str, new: str, expected: str) -> None:
    _replace(cluster / file, old, new)
    code, out, err = run_cli(capsys, "-C", str(cluster), "check")
    assert (code, out, err) == (2, "", f"pibake: error: {expected}\n")


def test_bootstrap_on_a_worker(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _replace(cluster / "profiles/compute-01.yaml", "compute_swarm_role: manager",
             "compute_swarm_role: worker")
    _replace(cluster / "profiles/compute-04.yaml", "compute_tier: backend",
             "compute_tier: backend\n  compute_swarm_role: manager")
    code, out, err = run_cli(capsys, "-C", str(cluster), "check")
    assert (code, out, err) == (2, "", "pibake: error: profiles/compute-01.yaml: "
                                "vars.compute_swarm_bootstrap: True is set on compute-01, a "
                                "worker; only a manager can create the swarm, set "
                                "compute_swarm_role: manager there or move the flag\n")
