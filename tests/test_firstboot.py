"""The first-boot runner (firstboot/pibake-firstboot) and its built-in steps,
run on the host against a temporary root with fake steps."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

FIRSTBOOT = Path(__file__).resolve().parent.parent / "firstboot"
RUNNER = FIRSTBOOT / "pibake-firstboot"
STEPS = FIRSTBOOT / "steps"


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc/pibake").mkdir(parents=True)
    (tmp_path / "etc/pibake/firstboot.env").write_text(
        "PIBAKE_HOST=compute-01\nPIBAKE_BOOT_DIR=/boot/firmware\n"
        "PIBAKE_STATUS_FILE=pibake-firstboot.txt\n"
    )
    (tmp_path / "boot/firmware").mkdir(parents=True)
    (tmp_path / "usr/local/lib/pibake/firstboot.d").mkdir(parents=True)
    (tmp_path / "log").mkdir()
    return tmp_path


def add_step(root: Path, name: str, body: str = "exit 0", mode: int = 0o755) -> Path:
    """A step that appends its name to log/order, then runs ``body``."""
    path = root / "usr/local/lib/pibake/firstboot.d" / name
    path.write_text(f'#!/bin/sh\necho {name} >> "$PIBAKE_FIRSTBOOT_ROOT/log/order"\n{body}\n')
    path.chmod(mode)
    return path


def run_runner(root: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PIBAKE_FIRSTBOOT_ROOT": str(root)}
    return subprocess.run(["sh", str(RUNNER)], env=env, capture_output=True, text=True, timeout=60)


def progress(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("pibake-firstboot: ")]


def order(root: Path) -> list[str]:
    log = root / "log/order"
    return log.read_text().split() if log.exists() else []


def status(root: Path) -> list[str]:
    text = (root / "boot/firmware/pibake-firstboot.txt").read_text()
    # drop the timestamps so lines can be compared exactly
    return [re.sub(r" \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", " T", line) for line in text.splitlines()]


def test_runs_steps_in_lexical_order_and_stamps_them(root: Path) -> None:
    add_step(root, "40-b.sh")
    add_step(root, "30-a.sh")
    add_step(root, "05-first.sh")
    res = run_runner(root)
    assert res.returncode == 0, res.stderr
    assert progress(res.stdout) == [
        "pibake-firstboot: 05-first ok",
        "pibake-firstboot: 30-a ok",
        "pibake-firstboot: 40-b ok",
        "pibake-firstboot: done",
    ]
    assert order(root) == ["05-first.sh", "30-a.sh", "40-b.sh"]
    stamps = sorted(p.name for p in (root / "var/lib/pibake/firstboot").glob("*.done"))
    assert stamps == ["05-first.done", "30-a.done", "40-b.done"]


def test_second_run_skips_done_steps_but_reports_done(root: Path) -> None:
    add_step(root, "30-a.sh")
    assert run_runner(root).returncode == 0
    res = run_runner(root)
    assert res.returncode == 0
    assert progress(res.stdout) == ["pibake-firstboot: done"]
    assert order(root) == ["30-a.sh"]


def test_failure_stops_names_the_step_and_retry_resumes_there(root: Path) -> None:
    add_step(root, "30-a.sh")
    add_step(root, "40-b.sh", 'test -e "$PIBAKE_FIRSTBOOT_ROOT/fixed" || exit 3')
    add_step(root, "50-c.sh")
    res = run_runner(root)
    assert res.returncode == 1
    assert progress(res.stdout) == [
        "pibake-firstboot: 30-a ok",
        "pibake-firstboot: 40-b failed (exit 3)",
        "pibake-firstboot: failed at 40-b",
    ]
    assert order(root) == ["30-a.sh", "40-b.sh"]
    assert not (root / "var/lib/pibake/firstboot/40-b.done").exists()
    assert status(root)[2:] == [
        "30-a ok T",
        "40-b failed T exit 3",
        "50-c pending -",
        "result: failed at 40-b",
    ]

    (root / "fixed").touch()
    res = run_runner(root)
    assert res.returncode == 0
    assert progress(res.stdout) == [
        "pibake-firstboot: 40-b ok",
        "pibake-firstboot: 50-c ok",
        "pibake-firstboot: done",
    ]
    assert order(root) == ["30-a.sh", "40-b.sh", "40-b.sh", "50-c.sh"]


def test_a_failed_step_says_what_it_waits_for_and_since_when(root: Path) -> None:
    add_step(root, "60-join.sh", 'echo "asking compute-01"\n'
                                 'echo "waiting for compute-01 to create the swarm"\nexit 1')
    stamps = root / "var/lib/pibake/firstboot"
    stamps.mkdir(parents=True)
    # its first try was four minutes ago: the runner has been retrying it since
    (stamps / "60-join.first-try").write_text(f"{int(time.time()) - 250}\n")
    res = run_runner(root)
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        "asking compute-01", "waiting for compute-01 to create the swarm",
        "pibake-firstboot: 60-join failed (exit 1: waiting for compute-01 to create the swarm "
        "(trying for 4m))",
        "pibake-firstboot: failed at 60-join"]
    assert status(root)[2:] == [
        "60-join failed T exit 1: waiting for compute-01 to create the swarm (trying for 4m)",
        "result: failed at 60-join"]


def test_a_long_step_shows_its_last_line_while_it_runs(root: Path) -> None:
    add_step(root, "40-guard.sh", 'echo "waiting for 10.20.0.12 (DNS secondary)"\n'
                                  'while [ ! -e "$PIBAKE_FIRSTBOOT_ROOT/go" ]; do sleep 0.2; done')
    env = {"PATH": os.environ["PATH"], "PIBAKE_FIRSTBOOT_ROOT": str(root),
           "PIBAKE_STATUS_EVERY": "1"}
    runner = subprocess.Popen(["sh", str(RUNNER)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        seen: list[str] = []
        while time.monotonic() < deadline:
            if (root / "boot/firmware/pibake-firstboot.txt").exists():
                seen = status(root)[2:]
                if seen and seen[0].endswith("waiting for 10.20.0.12 (DNS secondary)"):
                    break
            time.sleep(0.2)
        assert seen == ["40-guard running T waiting for 10.20.0.12 (DNS secondary)",
                        "result: running"]
    finally:
        (root / "go").touch()
        out, _ = runner.communicate(timeout=30)
    assert runner.returncode == 0
    assert progress(out) == ["pibake-firstboot: 40-guard ok", "pibake-firstboot: done"]
    assert status(root)[2:] == ["40-guard ok T", "result: done"]


def test_non_executable_step_is_an_error(root: Path) -> None:
    add_step(root, "30-a.sh")
    add_step(root, "40-noexec.sh", mode=0o644)
    res = run_runner(root)
    assert res.returncode == 1
    assert progress(res.stdout) == [
        "pibake-firstboot: 40-noexec failed (not executable)",
        "pibake-firstboot: failed at 40-noexec",
    ]
    assert order(root) == []  # checked before any step runs


def test_badly_named_file_is_an_error(root: Path) -> None:
    add_step(root, "30-a.sh")
    add_step(root, "README")
    res = run_runner(root)
    assert res.returncode == 1
    assert progress(res.stdout) == [
        "pibake-firstboot: README failed (not named NN-name.sh)",
        "pibake-firstboot: failed at README",
    ]
    assert order(root) == []


def test_status_file_after_success(root: Path) -> None:
    add_step(root, "30-a.sh")
    add_step(root, "40-b.sh")
    assert run_runner(root).returncode == 0
    lines = status(root)
    assert lines[0] == "# pibake first-boot status of compute-01 (non-secret), updated T"
    assert lines[2:] == ["30-a ok T", "40-b ok T", "result: done"]


def test_no_steps_is_done(root: Path) -> None:
    res = run_runner(root)
    assert res.returncode == 0
    assert progress(res.stdout) == ["pibake-firstboot: done"]


def test_steps_see_the_host_env(root: Path) -> None:
    add_step(
        root, "30-env.sh", 'echo "$PIBAKE_HOST $PIBAKE_BOOT_DIR" > "$PIBAKE_FIRSTBOOT_ROOT/log/env"'
    )
    assert run_runner(root).returncode == 0
    assert (root / "log/env").read_text() == "compute-01 /boot/firmware\n"


def test_builtin_steps_are_executable_posix_sh_numbered_below_30() -> None:
    names = sorted(p.name for p in STEPS.iterdir())
    assert names == [
        "05-grow-root.sh",
        "10-ssh-host-keys.sh",
        "15-wait-network.sh",
        "20-wait-clock.sh",
    ]
    for name in [*names, "../pibake-firstboot"]:
        path = STEPS / name
        assert os.access(path, os.X_OK), name
        assert path.read_text().startswith("#!/bin/sh\n"), name
        if shutil.which("dash"):
            assert subprocess.run(["dash", "-n", str(path)]).returncode == 0, name


@pytest.mark.parametrize("unit", ["pibake-firstboot.service", "pibake-ssh-host-keys.service"])
def test_units_use_only_options_known_to_systemd_232(unit: str) -> None:
    text = (FIRSTBOOT / unit).read_text()
    options = {
        line.split("=", 1)[0]
        for line in text.splitlines()
        if "=" in line and not line.startswith("#")
    }
    # every one of these is documented in systemd 232's man pages
    known_232 = {
        "Description",
        "Documentation",
        "After",
        "Before",
        "DefaultDependencies",
        "Conflicts",
        "Type",
        "RemainAfterExit",
        "ExecStart",
        "Restart",
        "RestartSec",
        "StandardOutput",
        "StandardError",
        "WantedBy",
    }
    assert options <= known_232
    assert "ConditionFirstBoot" not in options


def test_runner_unit_retries_and_reports_on_the_console() -> None:
    unit = (FIRSTBOOT / "pibake-firstboot.service").read_text()
    assert "Type=simple" in unit  # Restart= for oneshot needs systemd >= 244
    assert "Restart=on-failure" in unit
    assert "StandardOutput=journal+console" in unit
    # early, but after the mounts and tmpfiles, and stopped for shutdown
    assert "DefaultDependencies=no" in unit
    assert "After=local-fs.target systemd-tmpfiles-setup.service" in unit
    assert "Conflicts=shutdown.target" in unit and "Before=shutdown.target" in unit


def test_host_keys_unit_runs_the_step_before_sshd() -> None:
    unit = (FIRSTBOOT / "pibake-ssh-host-keys.service").read_text()
    assert "Before=ssh.service sshd.service" in unit
    assert "ExecStart=/usr/local/lib/pibake/firstboot.d/10-ssh-host-keys.sh" in unit
    assert (STEPS / "10-ssh-host-keys.sh").exists()


# -- built-in steps ----------------------------------------------------------


def run_step(
    name: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"] + ":/usr/sbin:/sbin", **env}
    return subprocess.run(
        ["sh", str(STEPS / name)], env=full, capture_output=True, text=True, timeout=timeout
    )


def test_wait_clock_does_not_wait_without_a_needs_clock_step(root: Path) -> None:
    steps = root / "usr/local/lib/pibake/firstboot.d"
    add_step(root, "30-a.sh")
    env = {
        "PIBAKE_FIRSTBOOT_ROOT": str(root),
        "PIBAKE_FIRSTBOOT_STEPS_DIR": str(steps),
        "PIBAKE_FIRSTBOOT_STAMP_DIR": str(root / "stamps"),
    }
    res = run_step("20-wait-clock.sh", env)
    assert (res.returncode, res.stdout) == (
        0,
        "wait-clock: no step needs a correct clock; not waiting\n",
    )


def test_wait_clock_times_out_when_a_step_needs_the_clock(root: Path) -> None:
    steps = root / "usr/local/lib/pibake/firstboot.d"
    add_step(root, "40-tsig.sh", "# pibake: needs-clock\nexit 0")
    env = {
        "PIBAKE_FIRSTBOOT_ROOT": str(root),
        "PIBAKE_FIRSTBOOT_STEPS_DIR": str(steps),
        "PIBAKE_FIRSTBOOT_STAMP_DIR": str(root / "stamps"),
        "PIBAKE_CLOCK_TIMEOUT": "0",
    }
    res = run_step("20-wait-clock.sh", env)
    assert (res.returncode, res.stdout) == (
        1,
        "wait-clock: clock not synchronized after 0s; 40-tsig needs it\n",
    )
    (root / "run/systemd/timesync").mkdir(parents=True)
    (root / "run/systemd/timesync/synchronized").touch()
    res = run_step("20-wait-clock.sh", env)
    assert (res.returncode, res.stdout) == (0, "wait-clock: clock synchronized after 0s\n")


def test_wait_clock_trusts_a_hardware_clock_that_set_the_time_at_boot(root: Path) -> None:
    steps = root / "usr/local/lib/pibake/firstboot.d"
    add_step(root, "60-join.sh", "# pibake: needs-clock\nexit 0")
    env = {"PIBAKE_FIRSTBOOT_ROOT": str(root), "PIBAKE_FIRSTBOOT_STEPS_DIR": str(steps),
           "PIBAKE_FIRSTBOOT_STAMP_DIR": str(root / "stamps"), "PIBAKE_CLOCK_TIMEOUT": "0"}
    rtc = root / "sys/class/rtc/rtc0"
    rtc.mkdir(parents=True)
    (rtc / "hctosys").write_text("1\n")
    built = root / "etc/pibake/host.json"
    built.write_text("{}\n")
    os.utime(built, (time.time() - 86400,) * 2)       # the image was built yesterday
    res = run_step("20-wait-clock.sh", env)
    assert (res.returncode, res.stdout) == (
        0, "wait-clock: the clock came from the hardware clock (rtc0) at boot; not waiting "
           "for NTP\n")
    os.utime(built, (time.time() + 86400,) * 2)       # a clock before the build: a dead battery
    assert run_step("20-wait-clock.sh", env).returncode == 1
    (rtc / "hctosys").write_text("0\n")                 # an RTC that did not set the clock
    os.utime(built, (time.time() - 86400,) * 2)
    assert run_step("20-wait-clock.sh", env).returncode == 1


def test_wait_network_sees_a_default_route(root: Path) -> None:
    (root / "proc/net").mkdir(parents=True)
    route = root / "proc/net/route"
    route.write_text("Iface\tDestination\tGateway\nlo\t0000007F\t00000000\t0001\n")
    env = {"PIBAKE_FIRSTBOOT_ROOT": str(root), "PIBAKE_NETWORK_TIMEOUT": "0"}
    res = run_step("15-wait-network.sh", env)
    assert (res.returncode, res.stdout) == (
        0,
        "wait-network: no default route after 0s; continuing\n",
    )
    route.write_text("Iface\tDestination\tGateway\neth0\t00000000\t0202000A\t0003\n")
    res = run_step("15-wait-network.sh", env)
    assert (res.returncode, res.stdout) == (0, "wait-network: default route after 0s\n")


def key_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "etc/ssh").glob("ssh_host_*_key"))


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen")
def test_ssh_host_keys_follow_the_hostkey_lines_and_are_created_once(root: Path) -> None:
    conf = root / "etc/ssh/sshd_config.d"
    conf.mkdir(parents=True)
    (root / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n")
    (conf / "10-pibake.conf").write_text(
        "PermitRootLogin no\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
        "hostkey /etc/ssh/ssh_host_ecdsa_key\n")
    env = {"PIBAKE_FIRSTBOOT_ROOT": str(root)}
    res = run_step("10-ssh-host-keys.sh", env)
    assert (res.returncode, res.stdout) == (0, "ssh-host-keys: created ed25519 ecdsa\n"), res.stderr
    assert key_names(root) == ["ssh_host_ecdsa_key", "ssh_host_ed25519_key"]  # no RSA
    mode = (root / "etc/ssh/ssh_host_ed25519_key").stat().st_mode & 0o777
    assert mode == 0o600
    before = (root / "etc/ssh/ssh_host_ed25519_key").read_bytes()
    res = run_step("10-ssh-host-keys.sh", env)
    assert res.stdout == "ssh-host-keys: image carries host keys; nothing to do\n"
    assert (root / "etc/ssh/ssh_host_ed25519_key").read_bytes() == before
    # a key the config asks for later is added; the others stay
    (conf / "10-pibake.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_rsa_key\n")
    res = run_step("10-ssh-host-keys.sh", env)
    assert res.stdout == "ssh-host-keys: created rsa\n"
    assert (root / "etc/ssh/ssh_host_ed25519_key").read_bytes() == before


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen")
def test_ssh_host_keys_without_hostkey_lines_are_the_default_set(root: Path) -> None:
    res = run_step("10-ssh-host-keys.sh", {"PIBAKE_FIRSTBOOT_ROOT": str(root)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "ssh-host-keys: created (ssh-keygen -A)"
    assert key_names(root) == ["ssh_host_ecdsa_key", "ssh_host_ed25519_key", "ssh_host_rsa_key"]


def test_ssh_host_keys_refuses_a_key_of_unknown_type(root: Path) -> None:
    if not shutil.which("ssh-keygen"):
        pytest.skip("needs ssh-keygen")
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/sshd_config").write_text("HostKey /etc/ssh/my_key\n")
    res = run_step("10-ssh-host-keys.sh", {"PIBAKE_FIRSTBOOT_ROOT": str(root)})
    assert (res.returncode, res.stdout) == (
        1, "ssh-host-keys: cannot tell the key type of HostKey /etc/ssh/my_key\n")


def make_disk(path: Path, size_mib: int, root_mib: int) -> None:
    """A dos-labelled disk file: a 4 MiB FAT-type partition, then root."""
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    table = f"label: dos\n2048,8192,c\n10240,{root_mib * 2048},83\n"
    subprocess.run(["sfdisk", "--quiet", str(path)], input=table, text=True, check=True)


def part2(path: Path) -> tuple[int, int]:
    out = subprocess.run(["sfdisk", "-d", str(path)], capture_output=True, text=True, check=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith(f"{path}2 :")][0]
    fields = dict(f.strip().split("=", 1) for f in line.split(":", 1)[1].split(","))
    return int(fields["start"]), int(fields["size"])


def disk_id(path: Path) -> str:
    return subprocess.run(["sfdisk", "--disk-id", str(path)], capture_output=True, text=True).stdout


def fs_bytes(path: Path) -> int:
    dump = subprocess.run(["dumpe2fs", "-h", str(path)], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in dump.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


@pytest.mark.skipif(not shutil.which("sfdisk", path="/usr/sbin:/sbin"), reason="needs sfdisk")
def test_grow_root_grows_partition_and_fs_once(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    make_disk(disk, size_mib=64, root_mib=16)
    fs = tmp_path / "root.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", str(fs), "16M"],
        check=True,
        env={"PATH": "/usr/sbin:/sbin:/usr/bin:/bin"},
    )
    with open(fs, "r+b") as f:  # stands in for the partition the kernel grew
        f.truncate(32 << 20)
    env = {"PIBAKE_GROW_DISK": str(disk), "PIBAKE_GROW_PARTNUM": "2", "PIBAKE_GROW_FS": str(fs)}
    id_before = disk_id(disk)

    res = run_step("05-grow-root.sh", env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[0] == f"grow-root: growing partition 2 of {disk} by 43 MiB"
    assert part2(disk) == (10240, (64 << 11) - 10240)
    assert fs_bytes(fs) == 32 << 20
    # the PARTUUID (disk id) that cmdline.txt and fstab name must not change
    assert disk_id(disk) == id_before

    table = disk.read_bytes()[:512]
    res = run_step("05-grow-root.sh", env)
    assert res.returncode == 0
    assert res.stdout.splitlines()[0] == f"grow-root: partition 2 already fills {disk}"
    assert disk.read_bytes()[:512] == table


@pytest.mark.skipif(not shutil.which("sfdisk", path="/usr/sbin:/sbin"), reason="needs sfdisk")
def test_grow_root_leaves_a_non_last_partition_alone(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    make_disk(disk, size_mib=64, root_mib=16)
    res = run_step("05-grow-root.sh", {"PIBAKE_GROW_DISK": str(disk), "PIBAKE_GROW_PARTNUM": "1"})
    assert (res.returncode, res.stdout) == (
        0,
        f"grow-root: partition 1 is not the last one on {disk}; not growing it\n",
    )
