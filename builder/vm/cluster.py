"""`pibake cluster-test`: boot a group of the inventory's nodes together under
QEMU, each on a throwaway overlay of its exact output image, and check from
inside every VM that it came up and joined its peers.

The checks are not written here: every image carries `pibake-check`, which
runs the checks its layers ship (`/usr/local/lib/pibake/checks.d/NN-*.sh`,
one line each). The same command serves the operator on the real cluster.
This module decides which nodes boot together, on which virtual LANs, when a
node is "rebuilt" (stopped, then booted again from a fresh overlay of its
image, as a re-flashed card), and it keeps asking every node until all checks
pass or the phase's deadline passes.

Scenarios come from the inventory: one per layer (its hosts) and `full` (every
host). A rebuild must give the node back its identity: its SSH host key is
compared before and after.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from builder.content.secrets import Store
from builder.errors import BootError
from builder.inventory.config import Inventory
from builder.run import run
from builder.vm.boot import GroupVm, NodeBoot, boot_group, ssh_argv
from builder.vm.qemu import LanSpec, free_udp_port

CHECK_LINE = re.compile(r"^pibake-check: (?P<name>\S+) (?P<state>ok|FAIL): ?(?P<detail>.*)$")
POLL_SECONDS = 10


class ClusterTestError(BootError):
    """A node did not reach the state its checks ask for in time."""

    exit_code = 9


@dataclass(frozen=True)
class Scenario:
    name: str
    hosts: tuple[str, ...]
    rebuild: tuple[str, ...]  # stopped and booted from a fresh overlay, one after another
    description: str


@dataclass(frozen=True)
class CheckLine:
    name: str
    ok: bool
    detail: str


@dataclass
class Passed:
    phase: str
    host: str
    check: str
    detail: str
    seconds: float  # since the phase started


@dataclass
class Report:
    scenario: str
    passed: list[Passed] = field(default_factory=list)
    phases: list[tuple[str, float]] = field(default_factory=list)
    peak_memory_mib: dict[str, float] = field(default_factory=dict)  # "host" / "host#2"
    wall_seconds: float = 0.0


def scenarios(inv: Inventory) -> dict[str, Scenario]:
    """One scenario per layer that some host selects (base and hardware add-ons
    such as sensehat excepted), plus `full`.
    The last host of each group is rebuilt: for a pair that is the peer that
    did not create the service, for compute a manager other than the bootstrap
    node in the shipped inventory."""
    result: dict[str, Scenario] = {}
    for layer, hosts in sorted(inv.groups().items()):
        if layer == "base" or not hosts or inv.layers[layer].addon:
            continue
        result[layer] = Scenario(layer, tuple(hosts), (hosts[-1],),
                                 f"the {layer} nodes: {', '.join(hosts)}")
    every = tuple(inv.cluster.nodes)
    result["full"] = Scenario("full", every, (every[-1],), "every node of the inventory")
    return result


def pick(inv: Inventory, name: str, rebuild: Sequence[str] | None) -> Scenario:
    known = scenarios(inv)
    if name not in known:
        raise ClusterTestError(f"cluster-test {name}: no such scenario (known: "
                               f"{', '.join(sorted(known))}); a scenario is a layer's nodes, "
                               "or full")
    scenario = known[name]
    if rebuild is None:
        return scenario
    for host in rebuild:
        if host not in scenario.hosts:
            raise ClusterTestError(f"--rebuild {host}: not a node of scenario {name} "
                                   f"({', '.join(scenario.hosts)})")
    return Scenario(scenario.name, scenario.hosts, tuple(rebuild), scenario.description)


def parse_checks(text: str) -> list[CheckLine]:
    """pibake-check's fixed lines; anything else (ssh banners, warnings) is skipped."""
    found = []
    for line in text.splitlines():
        m = CHECK_LINE.match(line.strip())
        if m:
            found.append(CheckLine(m["name"], m["state"] == "ok", m["detail"].strip()))
    return found


def images(project: Path, scenario: Scenario) -> dict[str, Path]:
    paths = {host: project / "output" / f"{host}.img" for host in scenario.hosts}
    missing = [host for host, path in paths.items() if not path.is_file()]
    if missing:
        raise ClusterTestError(f"output/{missing[0]}.img: not built; build the scenario's "
                               f"images first: pibake build {' '.join(missing)}")
    return paths


@dataclass
class Ssh:
    """SSH into the VMs through their forwarded management ports, each node's
    host key checked strictly against the cluster's host CA (as its name)."""

    user: str
    identity: Path
    known_hosts: Path

    def argv(self, host: str, port: int, command: str) -> list[str]:
        return ssh_argv(port, self.user, self.identity, command, host=host,
                        known_hosts=self.known_hosts)

    def run(self, host: str, port: int, command: str, timeout: float = 120) -> tuple[int, str]:
        try:
            proc = subprocess.run(self.argv(host, port, command), capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 255, f"ssh: no answer within {timeout:.0f}s"
        return proc.returncode, proc.stdout + proc.stderr

    def host_key(self, host: str, port: int) -> str:
        """The node's ed25519 host key as its sshd presents it."""
        code, out = self.run(host, port, "cat /etc/ssh/ssh_host_ed25519_key.pub")
        if code != 0 and "verification failed" in out:
            # ssh itself refused: the key differs from the one it met before
            raise ClusterTestError(f"{host}: presents another SSH host key than before its "
                                   "rebuild: its identity was not kept")
        if code != 0:
            raise ClusterTestError(f"{host}: cannot read its SSH host key: {out.strip()}")
        return " ".join(out.split()[:2])


def wait_healthy(vms: Mapping[str, GroupVm], ssh: Ssh, phase: str, report: Report,
                 timeout: float, echo: Callable[[str], None]) -> None:
    """Ask every node's pibake-check until all pass; echo each check the first
    time it passes. On the deadline: one line naming the first node and check
    still failing, with what it saw."""
    start = time.monotonic()
    seen: set[tuple[str, str]] = set()
    pending = dict(vms)
    last: dict[str, str] = {}
    while True:
        for host, vm in list(pending.items()):
            code, out = ssh.run(host, vm.result.ssh_port, "sudo -n pibake-check")
            lines = parse_checks(out)
            for line in lines:
                if line.ok and (host, line.name) not in seen:
                    seen.add((host, line.name))
                    took = time.monotonic() - start
                    report.passed.append(Passed(phase, host, line.name, line.detail, took))
                    echo(f"  ok  {host:14} {line.name:24} {took:6.0f}s  {line.detail}")
            failing = [line for line in lines if not line.ok]
            if code == 0 and lines and not failing:
                del pending[host]
            elif failing:
                last[host] = f"{failing[0].name}: {failing[0].detail}"
            else:
                last[host] = f"pibake-check did not run: {out.strip()[-200:] or f'exit {code}'}"
        if not pending:
            report.phases.append((phase, time.monotonic() - start))
            return
        if time.monotonic() - start > timeout:
            host = next(iter(pending))
            raise ClusterTestError(f"{phase}: {host} not healthy after {timeout:.0f}s: "
                                   f"{last.get(host, 'no answer')}")
        time.sleep(POLL_SECONDS)


def login_key(inv: Inventory, folder: Path) -> Path:
    """A throwaway key for the admin account, certified for two hours by the
    cluster's user CA (every sshd trusts it): no personal key is needed."""
    store = Store.at(inv)
    store.check()
    key = folder / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pibake cluster-test",
         "-f", str(key)], what="ssh-keygen")
    run(["ssh-keygen", "-q", "-s", str(store.path / "ca/ssh_user_ca"), "-I",
         "pibake-cluster-test", "-n", inv.cluster.admin.user, "-V", "+2h",
         str(key.with_suffix(".pub"))], what="ssh-keygen -s (user CA)")
    return key


def run_scenario(inv: Inventory, project: Path, scenario: Scenario, *,
                 identity: Path | None = None, boot_timeout: float = 1200,
                 check_timeout: float = 900, echo: Callable[[str], None] = print) -> Report:
    paths = images(project, scenario)
    if identity is not None and not identity.is_file():
        raise ClusterTestError(f"--identity {identity}: no such private key; give the key whose "
                               "public half is in cluster.yaml's admin.ssh_authorized_keys, or "
                               "leave it out to log in with a certificate of the cluster's user CA")
    known_hosts = Store.at(inv).path / "known_hosts"
    if not known_hosts.is_file():
        raise ClusterTestError(f"{known_hosts}: missing; the images were built without a "
                               "secrets store? run: pibake secrets init, then build them again")
    started = time.monotonic()
    report = Report(scenario.name)
    lans = {net: LanSpec(free_udp_port()) for net in
            sorted({inv.node(h).network for h in scenario.hosts})}

    def node(host: str) -> NodeBoot:
        n = inv.node(host)
        return NodeBoot(host, paths[host], n.mac, lan=lans[n.network])

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="pibake-ct-") as tmp:
        ssh = Ssh(inv.cluster.admin.user, identity or login_key(inv, Path(tmp)), known_hosts)
        echo(f"cluster-test {scenario.name}: booting {', '.join(scenario.hosts)}")
        vms = dict(stack.enter_context(
            boot_group([node(h) for h in scenario.hosts], timeout=boot_timeout)))
        for host, vm in vms.items():
            echo(f"  up  {host:14} first boot done in {vm.result.seconds:.0f}s")
        wait_healthy(vms, ssh, "joined", report, check_timeout, echo)
        for host in scenario.rebuild:
            key = ssh.host_key(host, vms[host].result.ssh_port)
            _record_memory(report, host, vms[host])
            echo(f"cluster-test {scenario.name}: {host} dies and is rebuilt from its image")
            vms[host].stop()
            again = stack.enter_context(boot_group([node(host)], timeout=boot_timeout))
            vms[host] = again[host]
            echo(f"  up  {host:14} first boot done in {vms[host].result.seconds:.0f}s")
            now = ssh.host_key(host, vms[host].result.ssh_port)
            if now != key:
                raise ClusterTestError(f"rebuild {host}: the node came back with another SSH "
                                       f"host key ({now.split()[-1][:16]}…, was "
                                       f"{key.split()[-1][:16]}…): its identity was not kept")
            report.passed.append(Passed(f"rebuild {host}", host, "same-host-key", key[:40], 0))
            echo(f"  ok  {host:14} {'same-host-key':24} {0:6.0f}s  {key.split()[0]}")
            wait_healthy(vms, ssh, f"rebuild {host}", report, check_timeout, echo)
        for host, vm in vms.items():
            _record_memory(report, host, vm)
    report.wall_seconds = time.monotonic() - started
    return report


def _record_memory(report: Report, host: str, vm: GroupVm) -> None:
    peak = vm.peak_memory_mib()
    if peak is None:
        return
    label, n = host, 1
    while label in report.peak_memory_mib:
        n += 1
        label = f"{host}#{n}"
    report.peak_memory_mib[label] = peak


def summary(report: Report) -> Iterator[str]:
    """The table printed at the end: per phase, checks passed and time taken;
    then every VM's peak memory and the wall time."""
    yield f"cluster-test {report.scenario}: passed"
    yield f"  {'phase':28} {'checks':>6} {'seconds':>8}"
    for phase, seconds in report.phases:
        count = sum(1 for p in report.passed if p.phase == phase)
        yield f"  {phase:28} {count:6d} {seconds:8.0f}"
    for label, mib in report.peak_memory_mib.items():
        yield f"  qemu peak memory {label:18} {mib:6.0f} MiB"
    yield f"  wall time {report.wall_seconds:.0f}s"
