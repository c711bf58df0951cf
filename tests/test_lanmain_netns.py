"""The lanmain pair's rendered configs, run with this machine's Kea and BIND in
network namespaces this test creates (no emulation, no other network).

Three namespaces (lm-a, lm-b, a client) hang off a bridge in a fourth. The
daemons run the exact files ``render_host`` produces for the image, with only
the machine-local paths moved into the test's folder (lease file, control
socket, pid files, the multiarch hooks folder) and the DHCP interface named
``lan0`` through the ``lanmain_interface`` var. ``make test-netns`` runs it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.content.render import Rendered, render_host
from builder.inventory.config import load_inventory
from tests.lanmain_project import make_lanmain_project

pytestmark = pytest.mark.netns

TOOLS = ("ip", "kea-dhcp4", "kea-ctrl-agent", "named", "dig", "dhclient")
HERE = Path(__file__).resolve().parent.parent
GUARD = HERE / "layers/lanmain/firstboot.d/40-dns-serial-guard.sh"
CHECKS = HERE / "layers/lanmain/files/usr/local/lib/pibake/checks.d"
ADDR = {"lm-a": "10.77.0.11", "lm-b": "10.77.0.12", "cl": "10.77.0.21"}
# Short HA timings so a failover happens in seconds (the image keeps Kea's defaults).
FAST_HA = {"lanmain_interface": "lan0", "lanmain_ha_heartbeat_delay_ms": 1000,
           "lanmain_ha_max_response_delay_ms": 3000, "lanmain_ha_max_unacked_clients": 0}


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


if os.geteuid() != 0 or not all(_tool(t) for t in TOOLS):
    pytest.skip("needs root and " + ", ".join(TOOLS) + " (scripts/setup-host.sh)",
                allow_module_level=True)


def wait_for(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    """Poll ``probe`` until it returns something true; fail naming ``what`` and its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


class Lab:
    """Namespaces on one bridge, and the daemons started in them; all removed on close."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tag = f"pbk{os.getpid() % 100000}"
        self.names: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def sh(self, *argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=20)

    def build(self, nodes: dict[str, str | None]) -> None:
        sw = self.ns("sw")
        self.sh("ip", "netns", "add", sw)
        self.names.append(sw)
        self.sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        self.sh("ip", "-n", sw, "link", "set", "br0", "up")
        for i, (name, addr) in enumerate(nodes.items()):
            ns = self.ns(name)
            self.sh("ip", "netns", "add", ns)
            self.names.append(ns)
            port = f"{self.tag}p{i}"
            self.sh("ip", "link", "add", port, "type", "veth", "peer", "name", "lan0", "netns", ns)
            self.sh("ip", "link", "set", port, "netns", sw)
            self.sh("ip", "-n", sw, "link", "set", port, "master", "br0", "up")
            self.sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.sh("ip", "-n", ns, "link", "set", "lan0", "up")
            if addr:
                self.sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "lan0")

    def start(self, key: str, node: str, argv: list[str], env: dict[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{key}.log", "ab")  # noqa: SIM115 (kept by the child)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(node), *argv],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        log.close()
        self.procs[key] = proc
        return proc

    def kill(self, key: str) -> None:
        proc = self.procs.pop(key)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def run(self, node: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns(node), *argv], text=True,
                              capture_output=True, timeout=timeout)

    def log(self, key: str) -> str:
        path = self.folder / f"{key}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for key in list(self.procs):
            self.kill(key)
        for ns in reversed(self.names):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def rendered(project: Path, host: str) -> dict[str, Rendered]:
    return {r.dest: r for r in render_host(load_inventory(project), host)}


def run_check(lab: Lab, project: Path, host: str, check: str, moved: dict[str, str],
              ) -> subprocess.CompletedProcess[str]:
    """One of the image's checks.d scripts, in ``host``'s namespace, with its env file
    (rendered for the image) pointing at the test's copies of the files it reads."""
    text = rendered(project, host)["/etc/pibake/lanmain.env"].data.decode()
    for old, new in moved.items():
        text = text.replace(old, new)
    env = lab.folder / f"{host}-lanmain.env"
    env.write_text(text)
    extra = [f"{k}={v}" for k, v in moved.items() if k.startswith("LANMAIN_")]
    return lab.run(host, "env", f"LANMAIN_ENV={env}", *extra, "sh", str(CHECKS / check))


# --- Kea HA ----------------------------------------------------------------------------------


def kea_json(r: Rendered) -> dict[str, Any]:
    text = "\n".join(ln for ln in r.data.decode().splitlines() if not ln.lstrip().startswith("//"))
    data: dict[str, Any] = json.loads(text)
    return data


def kea_command(sock: Path, command: str, arguments: dict[str, Any] | None = None,
                ) -> dict[str, Any]:
    """One command on kea-dhcp4's own control socket (a file: reachable from any namespace)."""
    request: dict[str, Any] = {"command": command}
    if arguments:
        request["arguments"] = arguments
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(json.dumps(request).encode())
        data = b""
        while True:
            try:
                answer: dict[str, Any] = json.loads(data)
                return answer
            except ValueError:
                chunk = s.recv(65536)
                if not chunk:
                    raise
                data += chunk


class KeaNode:
    def __init__(self, lab: Lab, project: Path, host: str) -> None:
        self.lab, self.host = lab, host
        self.dir = lab.folder / host
        self.dir.mkdir(exist_ok=True)
        self.sock = self.dir / "kea4.sock"
        self.leases = self.dir / "leases4.csv"
        files = rendered(project, host)
        hooks = sorted(glob.glob("/usr/lib/*/kea/hooks"))[0]
        dhcp = kea_json(files["/etc/kea/kea-dhcp4.conf"])
        d4 = dhcp["Dhcp4"]
        d4["control-socket"]["socket-name"] = str(self.sock)
        d4["lease-database"]["name"] = str(self.leases)
        for lib in d4["hooks-libraries"]:
            lib["library"] = re.sub(r"^/usr/lib/[^/]+/kea/hooks", hooks, lib["library"])
        agent = kea_json(files["/etc/kea/kea-ctrl-agent.conf"])
        agent["Control-agent"]["control-sockets"]["dhcp4"]["socket-name"] = str(self.sock)
        (self.dir / "kea-dhcp4.conf").write_text(json.dumps(dhcp))
        (self.dir / "kea-ctrl-agent.conf").write_text(json.dumps(agent))
        self.env = {"KEA_LOCKFILE_DIR": str(self.dir), "KEA_PIDFILE_DIR": str(self.dir)}

    def start(self) -> None:
        self.lab.start(f"{self.host}-dhcp4", self.host,
                       ["kea-dhcp4", "-c", str(self.dir / "kea-dhcp4.conf")], self.env)
        self.lab.start(f"{self.host}-agent", self.host,
                       ["kea-ctrl-agent", "-c", str(self.dir / "kea-ctrl-agent.conf")], self.env)

    def kill(self) -> None:
        self.lab.kill(f"{self.host}-dhcp4")
        self.lab.kill(f"{self.host}-agent")
        self.sock.unlink(missing_ok=True)

    def state(self) -> str:
        answer = kea_command(self.sock, "ha-heartbeat")
        return str(answer.get("arguments", {}).get("state", answer))

    def has_lease(self, ip: str) -> bool:
        return kea_command(self.sock, "lease4-get", {"ip-address": ip}).get("result") == 0


def dhcp_client(lab: Lab, name: str) -> dict[str, str]:
    """One DHCP exchange from the client namespace; the lease's fields."""
    lease = lab.folder / f"{name}.leases"
    pid = lab.folder / f"{name}.pid"
    proc = lab.run("cl", "dhclient", "-4", "-1", "-v", "-sf", "/bin/true", "-lf", str(lease),
                   "-pf", str(pid), "lan0", timeout=45)
    if pid.exists():  # dhclient stays to renew; this test only wants the lease
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid.read_text().strip()), signal.SIGKILL)
    assert proc.returncode == 0, f"dhclient failed: {proc.stderr[-400:]}"
    text = lease.read_text()
    fields = {"address": re.findall(r"fixed-address ([\d.]+);", text)[-1]}
    for opt in ("domain-name-servers", "ntp-servers", "domain-name"):
        found = re.findall(rf"option {opt} ([^;]+);", text)
        if found:
            fields[opt] = found[-1]
    return fields


def test_kea_ha_pair_serves_syncs_fails_over_and_resyncs_a_rebuilt_peer(
        tmp_path: Path, lab: Lab) -> None:
    project = make_lanmain_project(tmp_path / "project", vars=FAST_HA)
    lab.build({"lm-a": ADDR["lm-a"], "lm-b": ADDR["lm-b"], "cl": None})
    a, b = KeaNode(lab, project, "lm-a"), KeaNode(lab, project, "lm-b")
    a.start()
    b.start()
    wait_for("both peers in hot-standby", lambda: a.state() == b.state() == "hot-standby", 45)
    check = run_check(lab, project, "lm-b", "40-lanmain-dhcp-ha.sh",
                      {"LANMAIN_KEA_AGENT_CONF": str(b.dir / "kea-ctrl-agent.conf")})
    assert (check.returncode, check.stdout) == (0, "kea HA state hot-standby (partner lm-a)\n")

    first = dhcp_client(lab, "first")
    assert 100 <= int(first["address"].rsplit(".", 1)[1]) <= 150
    assert first["domain-name-servers"] == first["ntp-servers"] == "10.77.0.11,10.77.0.12"
    assert first["domain-name"] == '"pair.lan"'
    assert a.has_lease(first["address"])
    wait_for("the lease reached the standby", lambda: b.has_lease(first["address"]), 10)

    a.kill()  # the primary fails
    wait_for("standby takes over (partner-down)", lambda: b.state() == "partner-down", 30)
    check = run_check(lab, project, "lm-b", "40-lanmain-dhcp-ha.sh",
                      {"LANMAIN_KEA_AGENT_CONF": str(b.dir / "kea-ctrl-agent.conf")})
    assert (check.returncode, check.stdout) == (1, "kea HA state partner-down (partner lm-a)\n")
    again = dhcp_client(lab, "again")
    assert again["address"] == first["address"]

    a.leases.unlink(missing_ok=True)  # a rebuilt card: empty lease database
    a.start()
    wait_for("rebuilt primary back in hot-standby with its partner",
             lambda: a.state() == b.state() == "hot-standby", 45)
    assert a.has_lease(first["address"]), "the rebuilt primary did not get the survivor's lease"
    assert b.has_lease(first["address"]), "the survivor lost its lease"
    assert "HA_SYNC_SUCCESSFUL" in lab.log("lm-a-dhcp4")


# --- BIND ------------------------------------------------------------------------------------


class NamedNode:
    def __init__(self, lab: Lab, project: Path, host: str) -> None:
        self.lab, self.host = lab, host
        self.dir = lab.folder / f"{host}-named"
        (self.dir / "cache").mkdir(parents=True)
        self.files: dict[str, Path] = {}
        for dest, r in rendered(project, host).items():
            if not dest.startswith("/etc/bind/"):
                continue
            text = r.data.decode().replace("/etc/bind/", f"{self.dir}/etc/bind/")
            text = text.replace("/var/cache/bind", f"{self.dir}/cache")
            if dest.endswith("named.conf.options"):
                text = text.replace("options {\n", f'options {{\n    pid-file "{self.dir}/pid";\n'
                                    f'    session-keyfile "{self.dir}/session.key";\n', 1)
            path = self.dir / dest.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            self.files[dest] = path
        conf = self.dir / "named.conf"
        conf.write_text(f'include "{self.dir}/etc/bind/named.conf.options";\n'
                        f'include "{self.dir}/etc/bind/named.conf.local";\ncontrols {{ }};\n')
        self.conf = conf
        self.key = self.files["/etc/bind/pibake/xfer.key"]

    def start(self) -> None:
        self.lab.start(f"{self.host}-named", self.host,
                       ["named", "-g", "-n", "1", "-c", str(self.conf)])

    def stop(self) -> None:
        self.lab.kill(f"{self.host}-named")

    def reload(self) -> None:
        # `ip netns exec` execs named, so the child's pid is named's own
        os.kill(self.lab.procs[f"{self.host}-named"].pid, signal.SIGHUP)


def dig(lab: Lab, *args: str) -> str:
    return lab.run("cl", "dig", "+time=2", "+tries=1", *args, timeout=15).stdout


def serial(lab: Lab, server: str, zone: str = "pair.lan") -> int:
    out = dig(lab, "+short", f"@{server}", zone, "SOA").split()
    return int(out[2]) if len(out) >= 3 else 0


def test_bind_secondary_transfers_with_tsig_follows_notify_and_the_serial_guard(
        tmp_path: Path, lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764633600")
    project = make_lanmain_project(tmp_path / "project", vars=FAST_HA)
    lab.build(dict(ADDR))
    a, b = NamedNode(lab, project, "lm-a"), NamedNode(lab, project, "lm-b")
    a.start()
    b.start()
    pa, pb = ADDR["lm-a"], ADDR["lm-b"]
    wait_for("secondary loaded the zone from the primary",
             lambda: serial(lab, pb) == serial(lab, pa) == 1764633600, 30)
    wait_for("secondary loaded the reverse zone",
             lambda: serial(lab, pb, "0.77.10.in-addr.arpa") == 1764633600, 15)
    assert dig(lab, "+short", f"@{pb}", "cl-1.pair.lan", "A").strip() == "10.77.0.21"
    assert dig(lab, "+short", f"@{pb}", "-x", "10.77.0.21").strip() == "cl-1.pair.lan."

    with_key = dig(lab, "-k", str(a.key), f"@{pb}", "pair.lan", "AXFR")
    assert re.search(r"^cl-1\.pair\.lan\.\s+\d+\s+IN\s+A\s+10\.77\.0\.21$", with_key, re.M)
    primary_axfr = dig(lab, "-k", str(a.key), f"@{pa}", "pair.lan", "AXFR")
    def records(axfr: str) -> list[str]:  # the zone's records, without the TSIG signatures
        return sorted(ln for ln in axfr.splitlines()
                      if ln and not ln.startswith(";") and "\tTSIG\t" not in ln)

    assert len(records(with_key)) == 7 and records(with_key) == records(primary_axfr)
    assert "Transfer failed." in dig(lab, f"@{pb}", "pair.lan", "AXFR")
    assert "Transfer failed." in dig(lab, f"@{pa}", "pair.lan", "AXFR")
    check = run_check(lab, project, "lm-b", "41-lanmain-dns.sh",
                      {"/etc/bind/pibake/xfer.key": str(b.key)})
    assert (check.returncode, check.stdout) == (
        0, "serials here/lm-a: pair.lan 1764633600/1764633600 0.77.10.in-addr.arpa "
           "1764633600/1764633600; AXFR without key refused\n")
    wrong = lab.folder / "wrong.key"
    wrong.write_text(re.sub(r'secret "[^"]+"', 'secret "' + "A" * 43 + '="', b.key.read_text()))
    check = run_check(lab, project, "lm-b", "41-lanmain-dns.sh",
                      {"/etc/bind/pibake/xfer.key": str(wrong)})
    assert check.returncode == 1 and "tsig indicates error" in check.stdout, check.stdout

    # NOTIFY: a change on the primary reaches the secondary without waiting for refresh
    zone = a.files["/etc/bind/pibake/db.forward"]
    zone.write_text(zone.read_text().replace("1764633600 ; serial", "1764633601 ; serial")
                    + "new-host\tIN A\t10.77.0.99\n")
    a.reload()
    wait_for("NOTIFY brought the change to the secondary",
             lambda: dig(lab, "+short", f"@{pb}", "new-host.pair.lan").strip() == "10.77.0.99", 15)

    # An older image of the primary (lower serial): the guard raises it above the secondary's
    a.stop()
    check = run_check(lab, project, "lm-b", "41-lanmain-dns.sh",
                      {"/etc/bind/pibake/xfer.key": str(b.key)})
    assert (check.returncode, check.stdout) == (
        1, "serials here/lm-a: pair.lan 1764633601/none 0.77.10.in-addr.arpa 1764633600/none; "
           "AXFR without key refused (10.77.0.11: connection refused; 10.77.0.11: connection "
           "refused;)\n")
    zone.write_text(zone.read_text().replace("1764633601 ; serial", "1764600000 ; serial")
                    .replace("new-host\tIN A\t10.77.0.99\n", "old-image\tIN A\t10.77.0.98\n"))
    env = lab.folder / "lanmain.env"
    env.write_text(f"LANMAIN_ROLE=primary\nLANMAIN_PEER_IP={pb}\n"
                   'LANMAIN_ZONES="pair.lan 0.77.10.in-addr.arpa"\n'
                   f'LANMAIN_ZONE_FILES="{zone} {a.files["/etc/bind/pibake/db.reverse"]}"\n'
                   f"LANMAIN_TSIG_KEY={a.key}\n")
    guard = lab.run("lm-a", "env", f"LANMAIN_ENV={env}", "sh", str(GUARD), timeout=60)
    assert guard.returncode == 0, guard.stderr
    assert "pair.lan serial 1764600000 -> 1764633602 (secondary has 1764633601)" in guard.stdout
    assert "1764633602 ; serial" in zone.read_text()
    assert "0.77.10.in-addr.arpa serial 1764633600 (secondary: 1764633600)" in guard.stdout
    a.start()
    wait_for("secondary took the rebuilt primary's zone",
             lambda: dig(lab, "+short", f"@{pb}", "old-image.pair.lan").strip() == "10.77.0.98",
             30)

    # The same serial with other records (an inventory edited without a commit): raised too
    a.stop()
    zone.write_text(zone.read_text().replace("old-image\tIN A\t10.77.0.98\n",
                                             "uncommitted\tIN A\t10.77.0.97\n"))
    guard = lab.run("lm-a", "env", f"LANMAIN_ENV={env}", "sh", str(GUARD), timeout=60)
    assert "pair.lan serial 1764633602 -> 1764633603 (secondary has 1764633602)" in guard.stdout
    a.start()
    wait_for("secondary took the edited zone",
             lambda: dig(lab, "+short", f"@{pb}", "uncommitted.pair.lan").strip() == "10.77.0.97",
             30)

    # A rebuilt secondary (no zone copy) pulls both zones again
    b.stop()
    alone = lab.run("lm-a", "env", f"LANMAIN_ENV={env}", "LANMAIN_GUARD_WAIT=3", "sh", str(GUARD),
                    timeout=60)   # no secondary: the primary's serial stands, the step passes
    assert alone.returncode == 0, alone.stderr
    assert "pair.lan serial 1764633603 (secondary: no answer)" in alone.stdout
    shutil.rmtree(b.dir / "cache")
    (b.dir / "cache").mkdir()
    b.start()
    wait_for("rebuilt secondary transferred the zones",
             lambda: serial(lab, pb) == 1764633603
             and serial(lab, pb, "0.77.10.in-addr.arpa") == serial(lab, pa, "0.77.10.in-addr.arpa"),
             30)


# --- ISC dhcpd failover (the stretch choice) ----------------------------------------------


def test_isc_dhcpd_failover_pair_reaches_normal_and_shares_a_lease(
        tmp_path: Path, lab: Lab) -> None:
    project = make_lanmain_project(
        tmp_path / "project",
        vars={"lanmain_dhcp_server": "isc-dhcp", "lanmain_dhcp_mclt": 10,
              "lanmain_interface": "lan0"})
    lab.build({"lm-a": ADDR["lm-a"], "lm-b": ADDR["lm-b"], "cl": None})
    leases = {}
    for host in ("lm-a", "lm-b"):
        folder = lab.folder / f"{host}-dhcpd"
        folder.mkdir()
        conf = folder / "dhcpd.conf"
        conf.write_bytes(rendered(project, host)["/etc/dhcp/dhcpd.conf"].data)
        leases[host] = folder / "dhcpd.leases"
        leases[host].touch()
        lab.start(f"{host}-dhcpd", host, ["dhcpd", "-4", "-f", "-d", "-cf", str(conf),
                                          "-lf", str(leases[host]), "-pf",
                                          str(folder / "pid"), "lan0"])

    def both_normal() -> bool:
        return all(run_check(lab, project, h, "40-lanmain-dhcp-ha.sh",
                             {"LANMAIN_DHCPD_LEASES": str(leases[h])}).returncode == 0
                   for h in leases)

    wait_for("both failover peers normal", both_normal, 75)
    check = run_check(lab, project, "lm-a", "40-lanmain-dhcp-ha.sh",
                      {"LANMAIN_DHCPD_LEASES": str(leases["lm-a"])})
    assert check.stdout == "failover lanmain: me normal, partner (lm-b) normal\n"
    assert "failover peer lanmain: Both servers normal" in lab.log("lm-a-dhcpd")
    got = dhcp_client(lab, "isc")
    assert got["domain-name-servers"] == got["ntp-servers"] == "10.77.0.11,10.77.0.12"

    def active_on(host: str) -> bool:
        text = leases[host].read_text()
        return bool(re.search(rf"lease {re.escape(got['address'])} {{[^}}]*binding state "
                              r"active;", text))

    wait_for("the lease is active in both lease files",
             lambda: active_on("lm-a") and active_on("lm-b"), 15)
