"""cluster-test without emulation: scenarios from the inventory, the node-side
pibake-check runner, the polling loop, and the one-line errors."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.content.secrets import Store
from builder.inventory.config import load_inventory
from builder.vm import cluster
from builder.vm.cluster import (
    CheckLine,
    ClusterTestError,
    Report,
    Scenario,
    login_key,
    parse_checks,
    pick,
    scenarios,
    summary,
    wait_healthy,
)
from tests.conftest import REPO, write
from tests.test_config import run_cli

RUNNER = REPO / "layers/base/files/usr/local/sbin/pibake-check"
BASE_CHECKS = REPO / "layers/base/files/usr/local/lib/pibake/checks.d"


def test_scenarios_are_the_layers_groups_and_full(mini: Path) -> None:
    inv = load_inventory(mini)
    found = scenarios(inv)
    assert sorted(found) == ["full", "web"]
    assert found["web"].hosts == ("node-01", "node-02")
    assert found["web"].rebuild == ("node-02",)
    assert found["full"].hosts == ("node-01", "node-02")


def test_shipped_inventory_has_a_scenario_per_role() -> None:
    found = scenarios(load_inventory(REPO))
    assert sorted(found) == ["compute", "deployer", "full", "lanmain", "lanmisc"]
    assert found["lanmain"].hosts == ("lanmain-01", "lanmain-02")
    assert len(found["full"].hosts) == 8


def test_pick_names_known_scenarios_and_checks_rebuild(mini: Path) -> None:
    inv = load_inventory(mini)
    with pytest.raises(ClusterTestError) as err:
        pick(inv, "wbe", None)
    assert str(err.value) == ("cluster-test wbe: no such scenario (known: full, web); "
                              "a scenario is a layer's nodes, or full")
    with pytest.raises(ClusterTestError) as err:
        pick(inv, "web", ["node-09"])
    assert str(err.value) == "--rebuild node-09: not a node of scenario web (node-01, node-02)"
    assert pick(inv, "web", ["node-01"]).rebuild == ("node-01",)
    assert pick(inv, "web", ()).rebuild == ()


def test_cli_unknown_scenario_is_one_line_exit_9(mini: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(mini), "cluster-test", "nope")
    assert (code, out) == (9, "")
    assert err == ("pibake: error: cluster-test nope: no such scenario (known: full, web); "
                   "a scenario is a layer's nodes, or full\n")


def test_cli_missing_images_say_what_to_build(mini: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "-C", str(mini), "cluster-test", "web")
    assert code == 9
    assert err == ("pibake: error: output/node-01.img: not built; build the scenario's images "
                   "first: pibake build node-01 node-02\n")


def test_cli_missing_identity(mini: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    for host in ("node-01", "node-02"):
        write(mini / f"output/{host}.img", "x")
    code, _, err = run_cli(capsys, "-C", str(mini), "cluster-test", "web",
                           "--identity", str(tmp_path / "nokey"))
    assert code == 9
    assert err.startswith(f"pibake: error: --identity {tmp_path / 'nokey'}: no such private key")


def test_cli_images_without_a_store(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for host in ("node-01", "node-02"):
        write(mini / f"output/{host}.img", "x")
    code, _, err = run_cli(capsys, "-C", str(mini), "cluster-test", "web")
    assert code == 9
    assert err == (f"pibake: error: {mini}/secrets/known_hosts: missing; the images were built "
                   "without a secrets store? run: pibake secrets init, then build them again\n")


def test_login_key_is_certified_by_the_user_ca_for_the_admin(mini: Path, tmp_path: Path) -> None:
    inv = load_inventory(mini)
    Store.at(inv).init()
    key = login_key(inv, tmp_path)
    cert = subprocess.run(["ssh-keygen", "-L", "-f", str(key) + "-cert.pub"],
                          capture_output=True, text=True, check=True).stdout
    ca = mini / "secrets/ca/ssh_user_ca.pub"
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", str(ca)], capture_output=True,
                                 text=True, check=True).stdout.split()[1]
    assert "Type: ssh-ed25519-cert-v01@openssh.com user certificate" in cert
    assert f"Signing CA: ED25519 {fingerprint}" in cert
    assert "Principals: \n                admin\n" in cert


def test_parse_checks_keeps_only_the_fixed_lines() -> None:
    text = ("Warning: something\npibake-check: 10-firstboot ok: all first-boot steps done\n"
            "pibake-check: 30-ha FAIL: partner-down\nnoise\n")
    assert parse_checks(text) == [
        CheckLine("10-firstboot", True, "all first-boot steps done"),
        CheckLine("30-ha", False, "partner-down"),
    ]


def _runner(checks: Path, timeout: str = "5") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIBAKE_CHECKS_DIR": str(checks), "PIBAKE_CHECK_TIMEOUT": timeout}
    return subprocess.run(["sh", str(RUNNER)], capture_output=True, text=True, env=env)


def test_runner_reports_each_check_in_order(tmp_path: Path) -> None:
    write(tmp_path / "20-bad.sh", "#!/bin/sh\necho 'partner is down'\nexit 3\n", 0o755)
    write(tmp_path / "10-good.sh", "#!/bin/sh\necho 'two lines'\necho 'of detail'\n", 0o755)
    write(tmp_path / "30-noexec.sh", "#!/bin/sh\nexit 0\n", 0o644)
    write(tmp_path / "40-quiet.sh", "#!/bin/sh\nexit 0\n", 0o755)
    done = _runner(tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "pibake-check: 10-good ok: two lines of detail",
        "pibake-check: 20-bad FAIL: partner is down",
        "pibake-check: 30-noexec FAIL: not executable",
        "pibake-check: 40-quiet ok: ok",
    ]


def test_runner_times_out_a_hung_check(tmp_path: Path) -> None:
    write(tmp_path / "10-hang.sh", "#!/bin/sh\necho waiting\nsleep 30\n", 0o755)
    done = _runner(tmp_path, timeout="1")
    assert done.returncode == 1
    assert done.stdout == "pibake-check: 10-hang FAIL: no answer within 1s; waiting\n"


def test_runner_passes_when_all_pass(tmp_path: Path) -> None:
    write(tmp_path / "10-a.sh", "#!/bin/sh\necho fine\n", 0o755)
    assert _runner(tmp_path).returncode == 0
    assert _runner(tmp_path / "empty").stdout == ""


def test_base_firstboot_check_names_pending_steps(tmp_path: Path) -> None:
    text = (BASE_CHECKS / "10-firstboot.sh").read_text()
    steps, stamps = tmp_path / "steps", tmp_path / "stamps"
    write(steps / "05-grow-root.sh", "")
    write(steps / "30-join.sh", "")
    write(stamps / "05-grow-root.done", "")
    script = write(tmp_path / "check.sh", text.replace("/usr/local/lib/pibake/firstboot.d",
                                                       str(steps))
                   .replace("/var/lib/pibake/firstboot", str(stamps)), 0o755)
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (1, "first-boot steps not done: 30-join\n")
    write(stamps / "30-join.done", "")
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "all first-boot steps done\n")


@dataclass
class _Result:
    ssh_port: int


@dataclass
class _Vm:
    result: _Result


class _FakeSsh:
    """Answers from a script per host: each call pops the next answer."""

    def __init__(self, answers: dict[str, list[tuple[int, str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def run(self, host: str, port: int, command: str) -> tuple[int, str]:
        self.calls.append(host)
        queue = self.answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]


OK = "pibake-check: 10-firstboot ok: done\npibake-check: 30-ha ok: hot-standby\n"
WAITING = "pibake-check: 10-firstboot ok: done\npibake-check: 30-ha FAIL: waiting for partner\n"


def test_wait_healthy_polls_until_every_node_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "POLL_SECONDS", 0)
    vms = {"a": _Vm(_Result(1)), "b": _Vm(_Result(2))}
    fake = _FakeSsh({"a": [(1, WAITING), (0, OK)], "b": [(255, "ssh: refused"), (0, OK)]})
    report, seen = Report("t"), []
    wait_healthy(vms, fake, "joined", report, 60, seen.append)  # type: ignore[arg-type]
    assert [(p.host, p.check) for p in report.passed] == [
        ("a", "10-firstboot"), ("a", "30-ha"), ("b", "10-firstboot"), ("b", "30-ha")]
    assert fake.calls == ["a", "b", "a", "b"]  # a healthy node is not asked again
    assert len(seen) == 4 and all(line.startswith("  ok  ") for line in seen)
    assert report.phases[0][0] == "joined"


def test_wait_healthy_deadline_names_node_and_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "POLL_SECONDS", 0)
    vms = {"a": _Vm(_Result(1))}
    fake = _FakeSsh({"a": [(1, WAITING)]})
    with pytest.raises(ClusterTestError) as err:
        wait_healthy(vms, fake, "rebuild a", Report("t"), 0, lambda _: None)  # type: ignore[arg-type]
    assert str(err.value) == "rebuild a: a not healthy after 0s: 30-ha: waiting for partner"


def test_wait_healthy_says_when_the_runner_did_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "POLL_SECONDS", 0)
    fake = _FakeSsh({"a": [(255, "Permission denied (publickey).")]})
    with pytest.raises(ClusterTestError) as err:
        wait_healthy({"a": _Vm(_Result(1))}, fake, "joined", Report("t"), 0,  # type: ignore[arg-type]
                     lambda _: None)
    assert str(err.value) == ("joined: a not healthy after 0s: pibake-check did not run: "
                              "Permission denied (publickey).")


def test_summary_table() -> None:
    report = Report("web", phases=[("joined", 12.4), ("rebuild node-02", 30.0)],
                    peak_memory_mib={"node-01": 301.2, "node-02": 299.0, "node-02#2": 305.0},
                    wall_seconds=95.2)
    report.passed = [cluster.Passed("joined", "node-01", "10-firstboot", "", 1)]
    assert list(summary(report)) == [
        "cluster-test web: passed",
        "  phase                        checks  seconds",
        "  joined                            1       12",
        "  rebuild node-02                   0       30",
        "  qemu peak memory node-01               301 MiB",
        "  qemu peak memory node-02               299 MiB",
        "  qemu peak memory node-02#2             305 MiB",
        "  wall time 95s",
    ]


def test_scenario_is_frozen() -> None:
    s = Scenario("x", ("a",), (), "d")
    with pytest.raises(AttributeError):
        s.name = "y"  # type: ignore[misc]
