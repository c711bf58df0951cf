"""pibake boot: QEMU command lines, console parsing, KVM fallback, overlays,
reading the boot partition; boot tests (marker ``boot``) run a real image."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cache import sha256_file
from builder.errors import BootError
from builder.vm import boot, qemu
from builder.vm.boot import ConsoleWatch, boot_image, pick_kernel, virt_cmdline, watch_console
from builder.vm.qemu import (
    VIRT_CMDLINE,
    Arch,
    LanSpec,
    Machine,
    NodeLan,
    VmSpec,
    mac_for,
    pi3_mac_for,
    pick_accel,
    qemu_argv,
)

SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"


def spec(**kw: object) -> VmSpec:
    base: dict[str, object] = dict(
        disk=Path("/w/o.qcow2"),
        kernel=Path("/w/vmlinuz"),
        initrd=Path("/w/initrd"),
        append="root=PARTUUID=abcd-02 console=ttyAMA0",
        console_log=Path("/w/console.log"),
        qmp_socket=Path("/t/qmp.sock"),
        ssh_port=2222,
        mac="52:54:00:aa:bb:cc",
        mgmt_mac="52:54:00:dd:ee:ff",
    )
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def test_virt_arm64_argv() -> None:
    assert qemu_argv(spec()) == [
        "qemu-system-aarch64",
        "-M", "virt", "-cpu", "max,pauth=off,sve=off",
        "-accel", "tcg,tb-size=64", "-smp", "2", "-m", "512",
        "-nodefaults", "-display", "none", "-no-reboot",
        "-kernel", "/w/vmlinuz", "-initrd", "/w/initrd",
        "-append", "root=PARTUUID=abcd-02 console=ttyAMA0",
        "-chardev", "file,id=con,path=/w/console.log", "-serial", "chardev:con",
        "-drive", "if=none,id=disk0,format=qcow2,file=/w/o.qcow2",
        "-device", "virtio-blk-pci,drive=disk0",
        "-netdev", "hubport,id=lan0,hubid=0",
        "-device", "virtio-net-pci,netdev=lan0,mac=52:54:00:aa:bb:cc",
        "-netdev", "user,id=mgmt,hostfwd=tcp:127.0.0.1:2222-:22",
        "-device", "virtio-net-pci,netdev=mgmt,mac=52:54:00:dd:ee:ff",
        "-device", "virtio-rng-pci",
        "-qmp", "unix:/t/qmp.sock,server=on,wait=off",
    ]  # fmt: skip


def test_virt_armhf_argv_uses_qemu_system_arm_without_highmem() -> None:
    argv = qemu_argv(spec(arch=Arch.arm, smp=1))
    assert argv[:6] == ["qemu-system-arm", "-M", "virt,highmem=off", "-cpu", "cortex-a15", "-accel"]
    assert argv[argv.index("-smp") + 1] == "1"


def test_kvm_argv() -> None:
    argv = qemu_argv(spec(accel="kvm"))
    assert argv[3:7] == ["-cpu", "host", "-accel", "kvm"]


def test_lan_puts_the_nodes_own_nic_first_on_a_multicast_lan_on_localhost() -> None:
    argv = qemu_argv(spec(lan=LanSpec(port=41000)))
    i = argv.index("socket,id=lan0,mcast=230.0.0.1:41000,localaddr=127.0.0.1")
    assert argv[i - 1 : i + 7] == [
        "-netdev", "socket,id=lan0,mcast=230.0.0.1:41000,localaddr=127.0.0.1",
        "-device", "virtio-net-pci,netdev=lan0,mac=52:54:00:aa:bb:cc",       # eth0
        "-netdev", "user,id=mgmt,hostfwd=tcp:127.0.0.1:2222-:22",
        "-device", "virtio-net-pci,netdev=mgmt,mac=52:54:00:dd:ee:ff",       # eth1
    ]  # fmt: skip


def test_virt_cmdline_asks_for_dhcp_on_the_management_nic_only() -> None:
    assert VIRT_CMDLINE[0] == "ip=eth1:dhcp"


def test_raspi3b_argv_puts_the_console_on_the_mini_uart() -> None:
    argv = qemu_argv(spec(machine=Machine.raspi3b, dtb=Path("/w/bcm2837-rpi-3-b.dtb")))
    assert argv[:5] == ["qemu-system-aarch64", "-M", "raspi3b", "-accel", "tcg,thread=single"]
    i = argv.index("-serial")
    assert argv[i : i + 4] == ["-serial", "null", "-serial", "chardev:con"]
    assert "if=sd,format=qcow2,file=/w/o.qcow2" in argv
    assert argv[argv.index("-dtb") + 1] == "/w/bcm2837-rpi-3-b.dtb"
    assert "usb-net,netdev=net0,mac=52:54:00:aa:bb:cc" in argv


def test_macs_are_stable_distinct_and_locally_administered() -> None:
    assert mac_for("compute-01") == mac_for("compute-01")
    macs = {mac_for(f"compute-0{i}") for i in range(1, 9)} | {mac_for("compute-01/mgmt")}
    assert len(macs) == 9
    assert all(m.startswith("52:54:00:") and len(m) == 17 for m in macs)


@pytest.mark.parametrize(
    ("host", "guest", "present", "works", "expected"),
    [
        ("x86_64", Arch.arm64, True, True,
         ("tcg", "ARM guests cannot use KVM on a x86_64 host; using TCG emulation")),
        ("aarch64", Arch.arm64, False, True, ("tcg", "no /dev/kvm; using TCG emulation")),
        ("aarch64", Arch.arm64, True, False,
         ("tcg", "/dev/kvm is present but QEMU cannot use it; using TCG emulation")),
        ("aarch64", Arch.arm64, True, True, ("kvm", None)),
        ("aarch64", Arch.arm, True, True,
         ("tcg", "32-bit ARM guests are not run under KVM here; using TCG emulation")),
    ],
)  # fmt: skip
def test_pick_accel(
    host: str, guest: Arch, present: bool, works: bool, expected: tuple[str, str | None]
) -> None:
    probed: list[bool] = []

    def probe() -> bool:
        probed.append(True)
        return works

    assert pick_accel(host, guest, present, probe) == expected
    # the probe (a qemu start) runs only when KVM could be used at all
    assert bool(probed) == (host == "aarch64" and guest is Arch.arm64 and present)


def test_overlay_size_is_a_power_of_two_bigger_than_the_image() -> None:
    assert qemu.overlay_size(100 << 20) == 512 << 20
    assert qemu.overlay_size(1900 << 20) == 4 << 30
    assert qemu.overlay_size(2 << 30) == 4 << 30


def test_overlay_takes_the_writes_and_the_image_is_unchanged(tmp_path: Path) -> None:
    image = tmp_path / "host.img"
    image.write_bytes(b"\x5a" * (1 << 20))
    before = sha256_file(image)
    overlay = qemu.create_overlay(image, tmp_path / "o" / "overlay.qcow2")
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(overlay)], capture_output=True, text=True
    )
    assert json.loads(info.stdout)["virtual-size"] == 512 << 20
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", str(overlay)],
        check=True, capture_output=True,
    )  # fmt: skip
    read = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 64k", str(overlay)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "Pattern verification failed" not in read.stdout and read.returncode == 0
    assert sha256_file(image) == before


# -- console ---------------------------------------------------------------


def test_console_watch_collects_progress_and_done() -> None:
    watch = ConsoleWatch()
    lines = [
        "[    3.1] random: crng init done",
        "pibake-firstboot: 05-grow-root ok",
        "[  OK  ] Started ssh.service.pibake-firstboot: 10-ssh-host-keys ok\r",
        "grow-root: growing partition 2",
        "pibake-firstboot: done",
    ]
    msgs = [watch.feed(qemu.clean_line(line.encode())) for line in lines]
    assert msgs == [None, "05-grow-root ok", "10-ssh-host-keys ok", None, "done"]
    assert watch.progress == ["05-grow-root ok", "10-ssh-host-keys ok", "done"]
    assert watch.done and watch.failed_step is None


def test_console_watch_failure_names_the_step_and_keeps_20_lines() -> None:
    watch = ConsoleWatch()
    for i in range(30):
        watch.feed(f"line {i}")
    watch.feed("pibake-firstboot: 30-join failed (exit 1)")
    watch.feed("pibake-firstboot: failed at 30-join")
    assert watch.failed_step == "30-join" and not watch.done
    assert watch.last_lines().split(" | ")[0] == "line 12"
    assert len(watch.tail) == 20


def test_clean_line_drops_escapes_and_carriage_returns() -> None:
    raw = b"\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[1mMulti-User\x1b[0m.\r"
    assert qemu.clean_line(raw) == "  OK  ] Reached target Multi-User."


class FakeVm:
    def __init__(self, lines: list[str], code: int | None, err: str = "") -> None:
        self.lines, self.code, self.err = lines, code, err
        self.started = time.monotonic()

    def console_lines(self, deadline: float) -> Iterator[str]:
        yield from self.lines

    def exited(self) -> int | None:
        return self.code

    def stderr_tail(self) -> str:
        return self.err


def test_watch_console_done() -> None:
    vm = FakeVm(["x", "pibake-firstboot: 05-a ok", "pibake-firstboot: done", "after"], None)
    seconds, progress = watch_console(vm, "compute-01", 60)  # type: ignore[arg-type]
    assert progress == ["05-a ok", "done"]
    assert 0 <= seconds < 5


def _listener(answer: bytes | None) -> tuple[socket.socket, int]:
    """A loopback port that accepts, then sends ANSWER or resets (None), the way
    QEMU's user network forwards a port whose guest is or is not listening."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            if answer is None:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                conn.sendall(answer)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_ssh_banner_tells_a_listening_sshd_from_a_reset() -> None:
    ready, port = _listener(b"SSH-2.0-OpenSSH_10.0p2 Debian-7\r\n")
    reset, reset_port = _listener(None)
    with ready, reset:
        assert qemu.ssh_banner(port) == "SSH-2.0-OpenSSH_10.0p2 Debian-7"
        assert qemu.ssh_banner(reset_port, timeout=2) is None
        assert qemu.ssh_banner(qemu.free_port(), timeout=2) is None  # refused


def test_wait_for_sshd_names_the_port_when_it_never_answers() -> None:
    reset, port = _listener(None)
    with reset, pytest.raises(BootError) as err:
        boot.wait_for_sshd(FakeVm([], None), "node-02", port,  # type: ignore[arg-type]
                           time.monotonic() + 1.5)
    assert str(err.value) == (f"node-02: first boot done, but its sshd did not answer on "
                              f"127.0.0.1:{port}; read the console log: is ssh.service enabled?")
    with pytest.raises(BootError, match="qemu exited \\(code 1\\) after the first boot"):
        boot.wait_for_sshd(FakeVm([], 1), "node-02", port,  # type: ignore[arg-type]
                           time.monotonic() + 30)


def test_wait_for_sshd_returns_once_the_banner_comes() -> None:
    ready, port = _listener(b"SSH-2.0-OpenSSH_9.2p1\r\n")
    with ready:
        boot.wait_for_sshd(FakeVm([], None), "node-01", port,  # type: ignore[arg-type]
                           time.monotonic() + 5)


def test_watch_console_failed_step() -> None:
    lines = ["boot", "pibake-firstboot: 40-b failed (exit 1)", "pibake-firstboot: failed at 40-b"]
    with pytest.raises(BootError) as err:
        watch_console(FakeVm(lines, None), "compute-01", 60)  # type: ignore[arg-type]
    assert str(err.value) == (
        "compute-01: first-boot step 40-b failed; last console lines: boot | "
        "pibake-firstboot: 40-b failed (exit 1) | pibake-firstboot: failed at 40-b"
    )


def test_watch_console_timeout() -> None:
    with pytest.raises(BootError) as err:
        watch_console(FakeVm(["Booting Linux"], None), "compute-01", 90)  # type: ignore[arg-type]
    assert str(err.value) == (
        "compute-01: no 'pibake-firstboot: done' within 90s; raise the timeout or read the "
        "console; last console lines: Booting Linux"
    )


JOIN_RETRIED = ["pibake-firstboot: 60-join failed (exit 1: waiting for compute-01)",
                "pibake-firstboot: failed at 60-join"]


def test_a_node_among_peers_waits_through_a_retried_join() -> None:
    vm = FakeVm([*JOIN_RETRIED, "pibake-firstboot: 60-join ok", "pibake-firstboot: done"], None)
    _, progress = watch_console(vm, "compute-02", 90, retried=True)  # type: ignore[arg-type]
    assert progress[-2:] == ["60-join ok", "done"]
    with pytest.raises(BootError) as err:       # alone, the same failure ends the boot
        watch_console(FakeVm(JOIN_RETRIED, None), "compute-02", 90)  # type: ignore[arg-type]
    assert str(err.value).startswith("compute-02: first-boot step 60-join failed; ")


def test_a_join_that_never_succeeds_is_named_at_the_deadline() -> None:
    with pytest.raises(BootError) as err:
        watch_console(FakeVm(JOIN_RETRIED, None), "compute-02", 90,  # type: ignore[arg-type]
                      retried=True)
    assert str(err.value) == (
        "compute-02: no 'pibake-firstboot: done' within 90s; step 60-join failed (exit 1: "
        "waiting for compute-01) (retried); raise the timeout or read the console; last "
        "console lines: " + " | ".join(JOIN_RETRIED))


def test_watch_console_qemu_exit() -> None:
    vm = FakeVm([], 1, "qemu-system-aarch64: -drive: Could not open 'x'")
    with pytest.raises(BootError) as err:
        watch_console(vm, "compute-01", 90)  # type: ignore[arg-type]
    assert str(err.value) == (
        "compute-01: qemu exited (code 1) before the first boot finished: "
        "qemu-system-aarch64: -drive: Could not open 'x'; last console lines: none"
    )


# -- the image's boot partition ----------------------------------------------


def test_virt_cmdline_replaces_root_and_console() -> None:
    debian = "console=tty0 console=ttyS1,115200 root=/dev/mmcblk0p2 rw fsck.repair=yes cma=64M"
    assert virt_cmdline(debian, "1234abcd-02", "ttyAMA0", ()) == (
        "root=PARTUUID=1234abcd-02 rootfstype=ext4 rw fsck.repair=yes cma=64M "
        "console=ttyAMA0 rootwait"
    )
    raspbian = (
        "dwc_otg.lpm_enable=0 console=serial0,115200 console=tty1 root=PARTUUID=ee25660b-02 "
        "rootfstype=ext4 elevator=deadline fsck.repair=yes rootwait quiet "
        "init=/usr/lib/raspi-config/init_resize.sh"
    )
    assert virt_cmdline(raspbian, "ee25660b-02", "ttyAMA0", ("systemd.log_level=info",)) == (
        "root=PARTUUID=ee25660b-02 rootfstype=ext4 dwc_otg.lpm_enable=0 elevator=deadline "
        "fsck.repair=yes rootwait quiet console=ttyAMA0 systemd.log_level=info"
    )


def test_pick_kernel_newest_generic_kernel_and_its_initrd() -> None:
    names = [
        "config.txt", "initrd.img-6.1.0-9-arm64", "vmlinuz-6.1.0-9-arm64",
        "vmlinuz-6.1.0-10-arm64", "initrd.img-6.1.0-10-arm64",
    ]  # fmt: skip
    assert pick_kernel(Path("o/c.img"), names) == (
        "vmlinuz-6.1.0-10-arm64",
        "initrd.img-6.1.0-10-arm64",
        Arch.arm64,
    )
    assert pick_kernel(Path("o/c.img"), ["vmlinuz-6.1.0-10-armmp"]) == (
        "vmlinuz-6.1.0-10-armmp",
        None,
        Arch.arm,
    )


def test_pick_kernel_leaves_pi_only_kernels_to_a_generic_kit() -> None:
    img = Path("output/lanmain-01.img")
    assert pick_kernel(img, ["kernel.img", "kernel7.img", "cmdline.txt"]) is None
    assert pick_kernel(img, ["vmlinuz-6.1.0-28-rpi", "initrd.img-6.1.0-28-rpi"]) is None


def test_pick_kernel_refuses_a_boot_partition_without_kernel() -> None:
    with pytest.raises(BootError) as err:
        pick_kernel(Path("output/lanmain-01.img"), ["cmdline.txt", "config.txt"])
    assert str(err.value) == (
        "output/lanmain-01.img: no kernel on the boot partition (no vmlinuz-* or kernel*.img); "
        "is it a pibake output image?"
    )


def make_image(path: Path, files: dict[str, bytes]) -> None:
    """A tiny dos-labelled image: FAT boot partition with ``files``, empty root."""
    with open(path, "wb") as f:
        f.truncate(24 << 20)
    table = "label: dos\nlabel-id: 0x1234abcd\n2048,16384,c\n18432,,83\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=table, text=True, check=True)
    env = {"PATH": SBIN}
    subprocess.run(
        ["mkfs.vfat", "--offset", "2048", str(path), str(16384 // 2)],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    src = path.parent / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
        subprocess.run(
            ["mcopy", "-i", f"{path}@@{2048 * 512}", str(src / name), f"::/{name}"],
            check=True, env={**env, "MTOOLS_SKIP_CHECK": "1"},
        )  # fmt: skip


needs_tools = pytest.mark.skipif(
    not all(shutil.which(t, path=SBIN) for t in ("sfdisk", "mkfs.vfat", "mcopy")),
    reason="needs fdisk, dosfstools, mtools",
)


@needs_tools
def test_extract_boot_files_from_the_images_boot_partition(tmp_path: Path) -> None:
    image = tmp_path / "compute-01.img"
    make_image(
        image,
        {
            "vmlinuz-6.1.0-10-arm64": b"KERNEL",
            "initrd.img-6.1.0-10-arm64": b"INITRD",
            "cmdline.txt": b"console=tty0 console=ttyS1,115200 root=/dev/mmcblk0p2 rw\n",
            "config.txt": b"arm_64bit=1\n",
        },
    )
    before = sha256_file(image)
    work = tmp_path / "work"
    work.mkdir()
    files = boot.extract_boot_files(image, work, Machine.virt, ())
    assert files.kernel.read_bytes() == b"KERNEL"
    assert files.initrd is not None and files.initrd.read_bytes() == b"INITRD"
    assert files.cmdline == (
        "root=PARTUUID=1234abcd-02 rootfstype=ext4 rw console=ttyAMA0 rootwait ip=eth1:dhcp "
        "systemd.default_device_timeout_sec=300")
    assert files.arch is Arch.arm64 and files.dtb is None
    assert sha256_file(image) == before


@needs_tools
def test_raspi3b_needs_the_pi3_device_tree(tmp_path: Path) -> None:
    image = tmp_path / "compute-01.img"
    make_image(image, {"vmlinuz-6.1.0-10-arm64": b"K", "cmdline.txt": b"root=/dev/mmcblk0p2\n"})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BootError) as err:
        boot.extract_boot_files(image, work, Machine.raspi3b, ())
    assert str(err.value) == f"{image}: no bcm2837-rpi-3-b.dtb on the boot partition for raspi3b"


def test_missing_image_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(BootError) as err:
        boot_image(tmp_path / "nope.img", host="compute-01")
    assert (
        str(err.value)
        == f"{tmp_path}/nope.img: no such image; build it first: pibake build compute-01"
    )


# -- QEMU itself ---------------------------------------------------------------


@pytest.mark.boot
@pytest.mark.parametrize("powerdown_timeout", [2, 0])   # 0: stopped without asking the guest
def test_vm_leaves_no_qemu_behind_when_the_guest_ignores_powerdown(
        tmp_path: Path, powerdown_timeout: float) -> None:
    # a "kernel" of zeros never handles the power button: the kill fallback must act
    kernel = tmp_path / "zeros"
    kernel.write_bytes(bytes(4096))
    image = tmp_path / "i.img"
    image.write_bytes(bytes(1 << 20))
    overlay = qemu.create_overlay(image, tmp_path / "o.qcow2")
    sock_dir = qemu.short_tmpdir()
    vm_spec = spec(
        disk=overlay, kernel=kernel, initrd=None, console_log=tmp_path / "console.log",
        qmp_socket=sock_dir / "qmp.sock", ssh_port=qemu.free_port(),
    )  # fmt: skip
    vm = qemu.Vm(vm_spec, powerdown_timeout=powerdown_timeout)
    with vm:
        deadline = time.monotonic() + 10
        while not (sock_dir / "qmp.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert vm.exited() is None
        pid = vm.pid
    assert vm.exited() is not None
    assert not Path(f"/proc/{pid}").exists()
    shutil.rmtree(sock_dir)


@pytest.mark.parametrize("args, message", [
    (["--keep"], "--keep: works with one host"),
    (["--ssh-port", "2222"], "--ssh-port: works with one host"),
    (["--machine", "raspi3b"], "--machine raspi3b: works with one host"),
])
def test_group_boot_refuses_single_vm_options(mini: Path, args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-c", "from builder.cli import main; main()", "-C",
                           str(mini), "boot", "node-01", "node-02", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == BootError.exit_code, proc.stderr
    assert proc.stderr == (f"pibake: error: {message}; boot node-01, node-02 one by one or "
                           "drop the option\n")


def test_group_with_a_missing_image_names_the_build_command(mini: Path) -> None:
    group = boot.boot_group([boot.NodeBoot("node-01", mini / "output/node-01.img")],
                            lan=LanSpec(5000))
    with pytest.raises(BootError) as err, group:
        pass
    assert str(err.value) == (f"{mini}/output/node-01.img: no such image; build it first: "
                              "pibake build node-01")


def test_raspi3b_user_network_is_laid_over_the_node_lan() -> None:
    lan = boot.parse_lan("# managed by pibake\n[Match]\nName=eth0\n\n[Network]\n"
                         "Address=192.168.77.15/24\nGateway=192.168.77.1\nDNS=192.168.77.1\n")
    assert lan == NodeLan(ipaddress.IPv4Interface("192.168.77.15/24"),
                          ipaddress.IPv4Address("192.168.77.1"), None)
    argv = qemu_argv(spec(machine=Machine.raspi3b, dtb=Path("/w/b.dtb"), node_lan=lan))
    assert ("user,id=net0,net=192.168.77.0/24,host=192.168.77.1,dns=192.168.77.2,"
            "hostfwd=tcp:127.0.0.1:2222-192.168.77.15:22") in argv


def test_node_lan_avoids_the_node_address_and_reads_the_matched_mac() -> None:
    lan = boot.parse_lan("[Match]\nMACAddress=B8:27:EB:00:00:01\n[Network]\n"
                         "Address=10.20.0.3/24\n")
    assert lan is not None and lan.mac == "b8:27:eb:00:00:01"
    # no gateway: slirp's own side takes free addresses, never the node's
    assert lan.user_netdev(22).startswith("user,id=net0,net=10.20.0.0/24,host=10.20.0.2,"
                                          "dns=10.20.0.4,hostfwd=tcp:127.0.0.1:22-10.20.0.3:22")
    assert boot.parse_lan("[Network]\nDHCP=yes\n") is None
    assert boot.parse_lan("[Network]\nAddress=not-an-address\n") is None


def test_raspi3b_nic_gets_a_vendor_mac_so_usbnet_names_it_eth0() -> None:
    mac = pi3_mac_for("node-01")
    assert mac.startswith("b8:27:eb:") and mac == pi3_mac_for("node-01")
    assert not int(mac[:2], 16) & 0x02  # not locally administered
