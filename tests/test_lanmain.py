"""The lanmain layer: typed vars, the pair's checks, rendered configs, daemon checkers."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from builder.content import checkers
from builder.content.checkers import check_rendered, checks_for
from builder.content.render import Rendered, render_host
from builder.content.secrets import Store
from builder.errors import ConfigError, PreflightError
from builder.inventory.config import load_inventory
from builder.inventory.facts import reverse_zone
from tests.lanmain_project import PAIR_CLUSTER, make_lanmain_project
from tests.test_config import run_cli

NODES = PAIR_CLUSTER["nodes"]


def kea_json(r: Rendered) -> dict[str, Any]:
    """Kea accepts // comments; JSON does not."""
    text = "\n".join(ln for ln in r.data.decode().splitlines() if not ln.lstrip().startswith("//"))
    data: dict[str, Any] = json.loads(text)
    return data


def files(project: Path, host: str) -> dict[str, Rendered]:
    return {r.dest: r for r in render_host(load_inventory(project), host)}


def error_of(project: Path) -> str:
    with pytest.raises(ConfigError) as exc:
        load_inventory(project)
    return str(exc.value)


# --- bad inventories: one line each, naming file, key, value and fix ------------------------

BAD = [
    pytest.param(
        {"vars": {"lanmain_dhcp_range": "10.77.0.150,10.77.0.100"}},
        "profiles/cluster.yaml: vars.lanmain_dhcp_range: '10.77.0.150,10.77.0.100' ends before "
        "it starts; write it as \"10.77.0.100,10.77.0.150\"", id="range-backwards"),
    pytest.param(
        {"vars": {"lanmain_dhcp_range": "10.77.0.100-10.77.0.150"}},
        "profiles/cluster.yaml: vars.lanmain_dhcp_range: '10.77.0.100-10.77.0.150' is not an "
        "address range; write it as \"first,last\", like \"10.20.0.100,10.20.0.199\"",
        id="range-syntax"),
    pytest.param(
        {"vars": {"lanmain_dhcp_range": "10.77.1.100,10.77.1.150"}},
        "profiles/cluster.yaml: vars.lanmain_dhcp_range: '10.77.1.100,10.77.1.150' is not a "
        "host address of lm-a's network lan (10.77.0.0/24); pick one inside it",
        id="range-outside-network"),
    pytest.param(
        {"vars": {"lanmain_dhcp_range": "10.77.0.10,10.77.0.50"}},
        "profiles/cluster.yaml: vars.lanmain_dhcp_range: '10.77.0.10,10.77.0.50' contains "
        "10.77.0.11, the address of node lm-a; keep node addresses outside the pool",
        id="node-inside-pool"),
    pytest.param(
        {"vars": {"lanmain_dhcp_range": "10.77.0.1,10.77.0.9"}},
        "profiles/cluster.yaml: vars.lanmain_dhcp_range: '10.77.0.1,10.77.0.9' contains the "
        "gateway 10.77.0.1 of lan; start the range after it", id="gateway-inside-pool"),
    pytest.param(
        {"vars": {"lanmain_dns_forwarders": ["10.77.0.300"]}},
        "profiles/cluster.yaml: vars.lanmain_dns_forwarders: '10.77.0.300' is not an IPv4 "
        "address; write it like 10.20.0.11", id="forwarder-not-address"),
    pytest.param(
        {"vars": {"lanmain_ha_port": 70000}},
        "profiles/cluster.yaml: vars.lanmain_ha_port: 70000 is not a port; use a number from "
        "1 to 65535", id="port"),
    pytest.param(
        {"vars": {"lanmain_primary": "lm-aa"}},
        "profiles/cluster.yaml: vars.lanmain_primary: 'lm-aa' is not a node of "
        "profiles/cluster.yaml (known: cl-1, lm-a, lm-b); did you mean 'lm-a'?",
        id="primary-unknown-node"),
    pytest.param(
        {"vars": {"lanmain_primary": "cl-1"}},
        "profiles/cluster.yaml: vars.lanmain_primary: 'cl-1' is not one of the lanmain pair "
        "(known: lm-a, lm-b); name the primary", id="primary-not-in-pair"),
    pytest.param(
        {"vars": {"lanmain_primary": None}},
        "profiles/cluster.yaml: vars.lanmain_primary: missing; set it in profiles/cluster.yaml "
        "vars (a node) for lm-a", id="primary-missing"),
    pytest.param(
        {"vars": {"lanmain_dhcp_server": "dnsmasq"}},
        "profiles/cluster.yaml: vars.lanmain_dhcp_server: 'dnsmasq' is not a DHCP server choice "
        "(known: isc-dhcp, kea)", id="dhcp-server-choice"),
    pytest.param(
        {"layers": {"lm-a": ["base", "lanmain"], "lm-b": ["base"], "cl-1": ["base"]}},
        "profiles/lm-a.yaml: layers: the lanmain layer runs as a pair (DHCP HA, DNS "
        "primary/secondary) but 1 host(s) select it (lm-a); add lanmain to a second host's "
        "layers", id="pair-member-missing"),
    pytest.param(
        {"layers": {h: ["base", "lanmain"] for h in NODES}},
        "profiles/lm-a.yaml: layers: the lanmain layer runs as a pair (DHCP HA, DNS "
        "primary/secondary) but 3 host(s) select it (lm-a, lm-b, cl-1); keep it in exactly two "
        "profiles", id="pair-of-three"),
    pytest.param(
        {"host_vars": {"lm-b": {"lanmain_dhcp_range": "10.77.0.160,10.77.0.170"}}},
        "profiles/lm-b.yaml: vars.lanmain_dhcp_range: '10.77.0.160,10.77.0.170' differs from "
        "lm-a's '10.77.0.100,10.77.0.150' (profiles/cluster.yaml: vars.lanmain_dhcp_range); the "
        "pair must share it: set it once in profiles/cluster.yaml vars", id="pair-disagrees"),
    pytest.param(
        {"nodes": {**NODES, "lm-b": {"model": "pi3", "network": "other", "ip": "10.78.0.12"}},
         "networks": True},
        "profiles/cluster.yaml: nodes.lm-b.network: 'other': the lanmain pair must share one "
        "network and lm-a is on 'lan'; put both on one network", id="pair-split-networks"),
    pytest.param(
        {"layers": {"lm-a": ["base", "lanmain"], "lm-b": ["base", "lanmain"],
                    "cl-1": ["base", "compute"]},
         "vars": {"compute_floating_ip": "10.77.0.12"}},
        "profiles/cluster.yaml: vars.compute_floating_ip: '10.77.0.12' is the address of node "
        "lm-b; a floating IP needs an address no node has", id="floating-is-a-node"),
    pytest.param(
        {"layers": {"lm-a": ["base", "lanmain"], "lm-b": ["base", "lanmain"],
                    "cl-1": ["base", "compute"]},
         "vars": {"compute_floating_ip": "10.99.0.30"}},
        "profiles/cluster.yaml: vars.compute_floating_ip: '10.99.0.30' is not a host address "
        "of cl-1's network lan (10.77.0.0/24); pick one inside it", id="floating-outside"),
    pytest.param(
        {"layers": {"lm-a": ["base", "lanmain"], "lm-b": ["base", "lanmain"],
                    "cl-1": ["base", "compute"]},
         "vars": {"compute_floating_ip": "10.77.0.120"}},
        "profiles/cluster.yaml: vars.compute_floating_ip: '10.77.0.120' is inside the DHCP pool "
        "set at profiles/cluster.yaml: vars.lanmain_dhcp_range; pick a floating IP outside the "
        "pool", id="floating-in-pool"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_inventory_is_one_line(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    nodes = change.get("nodes")
    project = make_lanmain_project(tmp_path, vars=change.get("vars"), nodes=nodes,
                                   layers=change.get("layers"),
                                   host_vars=change.get("host_vars"))
    if change.get("networks"):
        text = (project / "profiles/cluster.yaml").read_text().replace(
            "networks:\n", "networks:\n  other: {cidr: 10.78.0.0/24, gateway: 10.78.0.1}\n", 1)
        (project / "profiles/cluster.yaml").write_text(text)
    assert error_of(project) == message


def test_bad_value_exits_2_with_one_line_and_no_output(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = make_lanmain_project(tmp_path, vars={"lanmain_dhcp_range": "10.77.0.10,10.77.0.50"})
    code, out, err = run_cli(capsys, "-C", str(project), "build", "lm-a")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "contains 10.77.0.11, the address of node lm-a" in err
    assert not (project / "output").exists()


def test_stretch_base_cannot_run_kea_ha(tmp_path: Path) -> None:
    project = make_lanmain_project(tmp_path)
    for host in ("lm-a", "lm-b"):
        (project / f"profiles/{host}.yaml").write_text(
            "base: raspbian-stretch-lite\nlayers: [base, lanmain]\n")
    assert error_of(project) == (
        "layers/lanmain/defaults.yaml: lanmain_dhcp_server: 'kea' on lm-a's base "
        "raspbian-stretch-lite (stretch), whose Kea has no HA hook; set lanmain_dhcp_server: "
        "isc-dhcp for this pair")


def test_unknown_type_in_layer_yaml(tmp_path: Path) -> None:
    project = make_lanmain_project(tmp_path)
    meta = project / "layers/lanmain/layer.yaml"
    meta.write_text(meta.read_text().replace("lanmain_ha_port: port", "lanmain_ha_port: prot"))
    assert error_of(project) == ("layers/lanmain/layer.yaml: types.lanmain_ha_port: unknown type "
                                 "'prot' (known: cidr, hostname, ipv4, ipv4_floating, ipv4_list, "
                                 "ipv4_range, node, port); did you mean 'port'?")


def test_reverse_zone_is_the_smallest_whole_octet_zone() -> None:
    import ipaddress as ip
    assert reverse_zone([ip.IPv4Address("10.20.0.11"), ip.IPv4Address("10.10.0.10")]) == \
        ("10.in-addr.arpa", 1)
    assert reverse_zone([ip.IPv4Address("192.168.7.1"), ip.IPv4Address("192.168.7.9")]) == \
        ("7.168.192.in-addr.arpa", 3)


# --- rendered configs ----------------------------------------------------------------------


def test_kea_pair_differs_only_in_this_server_name(tmp_path: Path) -> None:
    project = make_lanmain_project(tmp_path)
    a = kea_json(files(project, "lm-a")["/etc/kea/kea-dhcp4.conf"])
    b = kea_json(files(project, "lm-b")["/etc/kea/kea-dhcp4.conf"])
    ha_a = a["Dhcp4"]["hooks-libraries"][1]["parameters"]["high-availability"][0]
    ha_b = b["Dhcp4"]["hooks-libraries"][1]["parameters"]["high-availability"][0]
    assert (ha_a["this-server-name"], ha_b["this-server-name"]) == ("lm-a", "lm-b")
    assert ha_a["mode"] == "hot-standby"
    assert [(p["name"], p["role"], p["url"]) for p in ha_a["peers"]] == [
        ("lm-a", "primary", "http://10.77.0.11:8000/"),
        ("lm-b", "standby", "http://10.77.0.12:8000/")]
    ha_b["this-server-name"] = "lm-a"
    assert a == b
    libs = [h["library"] for h in a["Dhcp4"]["hooks-libraries"]]
    assert libs == ["/usr/lib/aarch64-linux-gnu/kea/hooks/libdhcp_lease_cmds.so",
                    "/usr/lib/aarch64-linux-gnu/kea/hooks/libdhcp_ha.so"]
    subnet = a["Dhcp4"]["subnet4"][0]
    assert subnet["pools"] == [{"pool": "10.77.0.100 - 10.77.0.150"}]
    assert subnet["reservations"] == [
        {"hw-address": "b8:27:eb:00:00:21", "ip-address": "10.77.0.21", "hostname": "cl-1"}]
    options = {o["name"]: o["data"] for o in a["Dhcp4"]["option-data"]}
    assert options["domain-name-servers"] == options["ntp-servers"] == "10.77.0.11, 10.77.0.12"


def test_kea_ctrl_agent_listens_on_own_address_with_the_pairs_password(tmp_path: Path) -> None:
    project = make_lanmain_project(tmp_path)
    inv = load_inventory(project)
    store = Store.at(inv)
    store.init()

    def stored(host: str) -> dict[str, Rendered]:
        return {r.dest: r for r in render_host(inv, host, store)}

    a = kea_json(stored("lm-a")["/etc/kea/kea-ctrl-agent.conf"])["Control-agent"]
    dhcp = kea_json(stored("lm-a")["/etc/kea/kea-dhcp4.conf"])
    peer = dhcp["Dhcp4"]["hooks-libraries"][1]["parameters"]["high-availability"][0]["peers"][1]
    assert (a["http-host"], a["http-port"]) == ("10.77.0.11", 8000)
    assert a["authentication"]["clients"] == [
        {"user": peer["basic-auth-user"], "password": peer["basic-auth-password"]}]
    # the pair's password is the store's (kept outside git), the same on both peers
    assert peer["basic-auth-password"] == store.value("lanmain_ha_api", "value")
    assert len(peer["basic-auth-password"]) == 32
    again = kea_json(stored("lm-b")["/etc/kea/kea-ctrl-agent.conf"])["Control-agent"]
    assert again["authentication"] == a["authentication"]
    # trixie's kea-ctrl-agent.service starts only if this file is not empty
    # (ConditionFileNotEmpty): the same password, alone, readable by Kea's user
    for host in ("lm-a", "lm-b"):
        api = stored(host)["/etc/kea/kea-api-password"]
        assert api.data.decode() == peer["basic-auth-password"] + "\n"
        assert (api.mode, api.owner, api.secrets) == (0o640, "root:_kea", ("lanmain_ha_api",))
    xfer = stored("lm-b")["/etc/bind/pibake/xfer.key"]
    assert store.value("lanmain_xfer", "secret") in xfer.data.decode()
    assert xfer.secrets == ("lanmain_xfer",) and xfer.mode == 0o640


def test_isc_dhcp_choice_renders_failover_and_no_kea(tmp_path: Path) -> None:
    project = make_lanmain_project(tmp_path, vars={"lanmain_dhcp_server": "isc-dhcp"})
    a, b = files(project, "lm-a"), files(project, "lm-b")
    assert not any(d.startswith("/etc/kea/") for d in [*a, *b])
    conf_a = a["/etc/dhcp/dhcpd.conf"].data.decode()
    conf_b = b["/etc/dhcp/dhcpd.conf"].data.decode()
    assert "  primary;\n  address 10.77.0.11;" in conf_a and "mclt 1800;" in conf_a
    assert "  secondary;\n  address 10.77.0.12;" in conf_b and "  mclt" not in conf_b
    assert "range 10.77.0.100 10.77.0.150;" in conf_a
    assert a["/etc/dhcp/dhcpd.conf"].mode == 0o600
    assert a["/etc/default/isc-dhcp-server"].data.decode().endswith('INTERFACESv4="eth0"\n'
                                                                     'INTERFACESv6=""\n')


def test_bind_primary_and_secondary(tmp_path: Path) -> None:
    project = make_lanmain_project(tmp_path)
    a, b = files(project, "lm-a"), files(project, "lm-b")
    local_a = a["/etc/bind/named.conf.local"].data.decode()
    local_b = b["/etc/bind/named.conf.local"].data.decode()
    assert 'zone "pair.lan" {\n    type primary;' in local_a
    assert "also-notify { 10.77.0.12 key pibake-xfer; };" in local_a
    assert 'zone "0.77.10.in-addr.arpa" {\n    type secondary;' in local_b
    assert "primaries { 10.77.0.11 key pibake-xfer; };" in local_b
    assert "/etc/bind/pibake/db.forward" in a and "/etc/bind/pibake/db.forward" not in b
    assert a["/etc/bind/pibake/xfer.key"].data == b["/etc/bind/pibake/xfer.key"].data
    assert a["/etc/bind/pibake/xfer.key"].mode == 0o640
    zone = a["/etc/bind/pibake/db.forward"].data.decode()
    assert re.search(r"^cl-1\tIN A\t10\.77\.0\.21$", zone, re.M)
    assert re.search(r"^@\tIN NS\tlm-b\.pair\.lan\.$", zone, re.M)
    rev = a["/etc/bind/pibake/db.reverse"].data.decode()
    assert re.search(r"^21\tIN PTR\tcl-1\.pair\.lan\.$", rev, re.M)


def test_serial_is_the_build_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_lanmain_project(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764633600")
    zone = files(project, "lm-a")["/etc/bind/pibake/db.forward"].data.decode()
    assert "\t\t1764633600 ; serial\n" in zone


def test_chrony_serves_the_cluster_and_peers(tmp_path: Path) -> None:
    project = make_lanmain_project(tmp_path)
    conf = files(project, "lm-b")["/etc/chrony/chrony.conf"].data.decode()
    assert "peer 10.77.0.11 iburst\n" in conf and "allow 10.77.0.0/24\n" in conf
    assert "local stratum 10 orphan\n" in conf


# --- checkers ------------------------------------------------------------------------------

needs_checkers = pytest.mark.skipif(
    not all(shutil.which(t) or Path("/usr/sbin", t).exists()
            for t in ("kea-dhcp4", "kea-ctrl-agent", "named-checkconf", "chronyd", "dhcpd")),
    reason="daemon checkers not installed (scripts/setup-host.sh installs them)")


@needs_checkers
def test_checkers_pass_on_both_dhcp_choices(tmp_path: Path) -> None:
    project = make_lanmain_project(tmp_path / "kea")
    # and vsftpd.conf, checked with the role configs
    assert check_rendered("lm-a", render_host(load_inventory(project), "lm-a")) == 7
    assert check_rendered("lm-b", render_host(load_inventory(project), "lm-b")) == 5
    isc = make_lanmain_project(tmp_path / "isc", vars={"lanmain_dhcp_server": "isc-dhcp"})
    rendered = render_host(load_inventory(isc), "lm-b")
    assert [c.name for c, _ in checks_for(rendered)] == [
        "named-checkconf -z", "chronyd -p", "dhcpd -t"]
    assert check_rendered("lm-b", rendered) == 4


BROKEN = [
    ("/etc/kea/kea-dhcp4.conf", '"valid-lifetime"', '"valid-lifetme"',
     "lm-a: /etc/kea/kea-dhcp4.conf: kea-dhcp4 -t failed: Syntax check failed with: "
     "/etc/kea/kea-dhcp4.conf:"),
    ("/etc/kea/kea-ctrl-agent.conf", '"http-port"', '"http-prt"',
     "lm-a: /etc/kea/kea-ctrl-agent.conf: kea-ctrl-agent -t failed: Syntax check failed with: "
     "/etc/kea/kea-ctrl-agent.conf:7."),
    ("/etc/bind/named.conf.local", "also-notify", "also-notfy",
     "lm-a: /etc/bind/named.conf.local: named-checkconf -z failed: "
     "/etc/bind/named.conf.local:"),
    ("/etc/bind/pibake/db.forward", "IN A\t10.77.0.21", "IN A\t10.77.0.321",
     "lm-a: /etc/bind/pibake/db.forward: named-checkzone failed: "),
    ("/etc/chrony/chrony.conf", "makestep 1 3", "makestp 1 3",
     "lm-a: /etc/chrony/chrony.conf: chronyd -p failed: "),
]


@needs_checkers
@pytest.mark.parametrize(("dest", "old", "new", "start"), BROKEN,
                         ids=[b[0].rsplit("/", 1)[1] for b in BROKEN])
def test_broken_config_is_one_line_from_its_checker(tmp_path: Path, dest: str, old: str,
                                                    new: str, start: str) -> None:
    project = make_lanmain_project(tmp_path)
    rendered = [replace(r, data=r.data.replace(old.encode(), new.encode()))
                if r.dest == dest else r for r in render_host(load_inventory(project), "lm-a")]
    with pytest.raises(ConfigError) as exc:
        check_rendered("lm-a", rendered)
    assert str(exc.value).startswith(start)
    assert "\n" not in str(exc.value) and "pibake-check-" not in str(exc.value)


@needs_checkers
def test_mclt_on_the_secondary_is_refused(tmp_path: Path) -> None:
    project = make_lanmain_project(tmp_path, vars={"lanmain_dhcp_server": "isc-dhcp"})
    rendered = [replace(r, data=r.data.replace(b"  port 647;\n", b"  port 647;\n  mclt 60;\n", 1))
                if r.dest == "/etc/dhcp/dhcpd.conf" else r
                for r in render_host(load_inventory(project), "lm-b")]
    with pytest.raises(ConfigError) as exc:
        check_rendered("lm-b", rendered)
    assert str(exc.value) == ("lm-b: /etc/dhcp/dhcpd.conf: failover peer: mclt/split/hba on the "
                              "secondary; set them on the primary only")


def test_missing_checker_names_its_package(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_lanmain_project(tmp_path)
    rendered = render_host(load_inventory(project), "lm-a")
    monkeypatch.setattr(checkers.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr("builder.run.shutil.which", lambda *a, **k: None)
    with pytest.raises(PreflightError) as exc:
        check_rendered("lm-a", rendered)
    assert str(exc.value) == (
        "daemon config checker(s) not found: chronyd, kea-ctrl-agent, kea-dhcp4, named-checkconf, "
        "named-checkzone; install them: apt-get install bind9-utils chrony kea-ctrl-agent "
        "kea-dhcp4-server (or run make setup)")


@needs_checkers
def test_pibake_check_runs_the_checkers_on_the_shipped_inventory(
        capsys: pytest.CaptureFixture[str]) -> None:
    repo = Path(__file__).resolve().parent.parent
    code, out, err = run_cli(capsys, "-C", str(repo), "check")
    assert (code, err) == (0, "")
    assert out.endswith(", 46 configs passed their daemon's checker\n")
