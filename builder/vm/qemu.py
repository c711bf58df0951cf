"""QEMU: the one module that builds qemu command lines and runs virtual machines.

``VmSpec`` describes a VM; ``qemu_argv(spec)`` turns it into a command line
(pure, unit-tested); ``Vm(spec)`` is a context manager that starts QEMU, tails
its serial console (written to ``console.log`` in the VM's folder, so a VM left
running with ``keep`` still has a console and the log survives for debugging),
and on exit powers the guest off over QMP (``system_powerdown``), killing the
process group if it has not stopped in time. The process is registered with
builder.run, so Ctrl-C never leaves a qemu behind.

Disks are always a qcow2 overlay over the raw image (``create_overlay``); the
image itself is opened read-only as the backing file and never modified.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import ipaddress
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from builder import log
from builder.errors import PibakeError
from builder.run import kill_group, register, run, unregister, which

QEMU_PACKAGE = "qemu-system-arm"


class Machine(StrEnum):
    virt = "virt"
    raspi3b = "raspi3b"


class Arch(StrEnum):
    arm64 = "arm64"
    arm = "arm"  # armhf/armel user space, armmp kernel


@dataclass(frozen=True)
class LanSpec:
    """A virtual LAN shared by every VM given the same port: QEMU's multicast
    socket netdev, bound to 127.0.0.1 so nothing leaves the machine."""

    port: int
    group: str = "230.0.0.1"


@dataclass(frozen=True)
class VmSpec:
    disk: Path  # qcow2 overlay
    kernel: Path
    initrd: Path | None
    append: str
    console_log: Path
    qmp_socket: Path
    ssh_port: int
    mac: str  # the node's own NIC (eth0)
    arch: Arch = Arch.arm64
    machine: Machine = Machine.virt
    dtb: Path | None = None
    smp: int = 2
    memory_mib: int = 512
    accel: str = "tcg"
    lan: LanSpec | None = None          # None: the node's NIC is on a LAN of its own
    mgmt_mac: str | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    # raspi3b's one NIC: QEMU's user network laid over the node's own LAN
    # (its static address and gateway, from the image), SSH forwarded to it
    node_lan: NodeLan | None = None


@dataclass(frozen=True)
class NodeLan:
    """The node's address on its LAN, as the image's network config says."""

    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None = None
    mac: str | None = None  # the MAC the config matches, if it matches one

    def user_netdev(self, ssh_port: int) -> str:
        """A QEMU user network on this LAN: its gateway is the node's gateway,
        port ``ssh_port`` on 127.0.0.1 reaches the node's sshd."""
        net = self.address.network
        hosts = [h for h in (net[2], net[3], net[4]) if h != self.address.ip]
        host = self.gateway if self.gateway is not None and self.gateway in net else hosts[0]
        dns = next(h for h in hosts if h != host)
        return (f"user,id=net0,net={net},host={host},dns={dns},"
                f"hostfwd=tcp:127.0.0.1:{ssh_port}-{self.address.ip}:22")


# Kernel arguments for -M virt. DHCP on the management NIC: systemd-networkd
# images turn it into a .network file (systemd-network-generator, enabled by
# the host layer); dhcpcd and NetworkManager take any unconfigured NIC by DHCP.
# A longer device timeout: several emulated VMs on two cores can take more than
# systemd's 90 s to see a disk partition (older systemd ignores the option).
VIRT_CMDLINE: tuple[str, ...] = ("ip=eth1:dhcp", "systemd.default_device_timeout_sec=300")

# Kernel arguments for -M raspi3b. Its NIC is QEMU's usb-net, an RNDIS device
# whose data interface cdc_subset claims too: whichever module udev loads first
# wins, and cdc_subset makes it usb0 with a random MAC, so the node's eth0
# config never applies (seen under load). A real Pi 3's smsc95xx or lan78xx
# never meets cdc_subset; keeping it out leaves the NIC to cdc_ether (or
# rndis_host), which read the MAC QEMU was given.
RASPI3B_CMDLINE: tuple[str, ...] = ("modprobe.blacklist=cdc_subset",)


def qemu_binary(arch: Arch) -> str:
    return "qemu-system-aarch64" if arch is Arch.arm64 else "qemu-system-arm"


def mac_for(name: str) -> str:
    """A stable locally administered MAC per VM; QEMU gives every VM the same one."""
    digest = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def pi3_mac_for(name: str) -> str:
    """A stable MAC in the Pi 3's own OUI for raspi3b's USB NIC: Linux's usbnet
    names a NIC with a locally administered MAC usb0, one with a vendor MAC eth0
    (as the Pi 3's onboard NIC is)."""
    digest = hashlib.sha256(name.encode()).digest()
    return "b8:27:eb:" + ":".join(f"{b:02x}" for b in digest[:3])


def ssh_banner(port: int, timeout: float = 10) -> str | None:
    """The SSH banner the forwarded port answers with, or None. QEMU's user
    network accepts a connection on the host side before the guest does, so a
    port whose guest sshd is not listening yet connects and is then reset."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            line = s.recv(256)
    except OSError:
        return None
    text = line.decode("ascii", "replace").strip()
    return text if text.startswith("SSH-") else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    """A free UDP port on 127.0.0.1 for a virtual LAN of its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qemu_argv(spec: VmSpec) -> list[str]:
    argv = [qemu_binary(spec.arch)]
    if spec.machine is Machine.virt:
        # non-LPAE armmp kernels cannot reach the RAM that virt maps above 4 GiB
        argv += ["-M", "virt" if spec.arch is Arch.arm64 else "virt,highmem=off"]
        if spec.accel == "kvm":
            argv += ["-cpu", "host"]
        elif spec.arch is Arch.arm64:
            # ARMv8.x with LSE atomics (cortex-a72 lacks them: 40% slower), but no
            # pointer authentication (Debian's PAC instructions are hints, NOPs
            # then) and no SVE (its wide registers are saved on every context
            # switch): 42 s to done instead of 60 s with pauth-impdef. A Pi 3/4
            # has neither feature either.
            argv += ["-cpu", "max,pauth=off,sve=off"]
        else:
            argv += ["-cpu", "cortex-a15"]
        accel = "kvm" if spec.accel == "kvm" else "tcg,tb-size=64"
        argv += ["-accel", accel, "-smp", str(spec.smp), "-m", str(spec.memory_mib)]
    else:
        # raspi3b: fixed 1 GiB and 4 cores; multi-threaded TCG hangs it here
        argv += ["-M", "raspi3b", "-accel", "tcg,thread=single"]
    argv += ["-nodefaults", "-display", "none", "-no-reboot"]
    argv += ["-kernel", str(spec.kernel)]
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    if spec.dtb is not None:
        argv += ["-dtb", str(spec.dtb)]
    argv += ["-append", spec.append]
    argv += ["-chardev", f"file,id=con,path={spec.console_log}"]
    if spec.machine is Machine.raspi3b:
        # the console is the mini-UART (ttyS1), the second serial port
        argv += ["-serial", "null", "-serial", "chardev:con"]
        argv += ["-drive", f"if=sd,format=qcow2,file={spec.disk}"]
        if spec.node_lan is not None:
            argv += ["-netdev", spec.node_lan.user_netdev(spec.ssh_port)]
        else:
            argv += ["-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"]
        argv += ["-device", f"usb-net,netdev=net0,mac={spec.mac}"]
    else:
        argv += ["-serial", "chardev:con"]
        argv += ["-drive", f"if=none,id=disk0,format=qcow2,file={spec.disk}"]
        argv += ["-device", "virtio-blk-pci,drive=disk0"]
        # eth0, the node's own NIC, carries the image's network config as on
        # the Pi: on the LAN shared with the other VMs, or on a hub of its own.
        if spec.lan is not None:
            lan = f"socket,id=lan0,mcast={spec.lan.group}:{spec.lan.port},localaddr=127.0.0.1"
        else:
            lan = "hubport,id=lan0,hubid=0"
        argv += ["-netdev", lan]
        argv += ["-device", f"virtio-net-pci,netdev=lan0,mac={spec.mac}"]
        # eth1, for this machine only: QEMU's user network with SSH forwarded;
        # the guest takes its address by DHCP (ip=eth1:dhcp, see VIRT_CMDLINE).
        argv += ["-netdev", f"user,id=mgmt,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"]
        argv += ["-device", f"virtio-net-pci,netdev=mgmt,mac={spec.mgmt_mac or mac_for(spec.mac)}"]
        # early-boot entropy for sshd and key generation
        argv += ["-device", "virtio-rng-pci"]
    argv += ["-qmp", f"unix:{spec.qmp_socket},server=on,wait=off"]
    argv += list(spec.extra_args)
    return argv


# -- acceleration ----------------------------------------------------------


def pick_accel(
    host_arch: str, guest: Arch, kvm_present: bool, kvm_probe: Callable[[], bool]
) -> tuple[str, str | None]:
    """Return ("kvm" | "tcg", one-line notice or None)."""
    if host_arch not in ("aarch64", "arm64"):
        return "tcg", f"ARM guests cannot use KVM on a {host_arch} host; using TCG emulation"
    if guest is not Arch.arm64:
        return "tcg", "32-bit ARM guests are not run under KVM here; using TCG emulation"
    if not kvm_present:
        return "tcg", "no /dev/kvm; using TCG emulation"
    if not kvm_probe():
        return "tcg", "/dev/kvm is present but QEMU cannot use it; using TCG emulation"
    return "kvm", None


def probe_kvm(arch: Arch) -> bool:
    """Start QEMU with KVM and no machine, and stop it at once."""
    try:
        proc = run(
            [qemu_binary(arch), "-M", "none", "-accel", "kvm", "-display", "none", "-S",
             "-monitor", "stdio", "-nodefaults"],
            input=b"quit\n", capture=True, timeout=20, check=False, what="qemu kvm probe",
        )  # fmt: skip
    except PibakeError:
        return False
    return proc.returncode == 0


_KVM_GET_API_VERSION = 0xAE00
_kvm: bool | None = None  # this process's one answer to "does /dev/kvm work here?"


def _dev_kvm_answers() -> bool:
    """/dev/kvm opens and speaks the stable API (a cheap probe: a KVM that
    passes it can still fail at launch on a nested VM; see kvm_failed)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def kvm_works() -> bool:
    """Whether KVM works on this host: decided once per process and shared by
    libguestfs's appliance and QEMU, with one notice when it does not."""
    global _kvm
    if _kvm is None:
        _kvm = _dev_kvm_answers()
        if not _kvm:
            log.notice("KVM is not available here (no usable /dev/kvm); libguestfs and QEMU "
                       "use TCG emulation (slower)")
    return _kvm


def kvm_failed(what: str) -> None:
    """KVM passed the probe but ``what`` could not start with it: remember, so
    every later launch goes straight to TCG, and say so once."""
    global _kvm
    if _kvm is not False:
        log.notice(f"KVM failed to start {what}; using TCG emulation (slower) from now on")
    _kvm = False


@functools.cache
def choose_accel(arch: Arch) -> str:
    """Once per process and architecture: a group of VMs gets one notice."""
    host = platform.machine()
    if host in ("aarch64", "arm64") and arch is Arch.arm64 and not kvm_works():
        return "tcg"  # kvm_works() has said why
    accel, notice = pick_accel(host, arch, True, lambda: probe_kvm(arch))
    if notice:
        log.notice(notice)
    return accel


# -- overlay ---------------------------------------------------------------


def overlay_size(image_bytes: int) -> int:
    """Bigger than the image, so the grow-root step has work to do, and a power
    of two, which raspi3b's SD card model requires."""
    size = 1 << 20
    while size < image_bytes + (256 << 20):
        size <<= 1
    return size


def create_overlay(image: Path, overlay: Path, size: int | None = None) -> Path:
    """A qcow2 overlay over the raw ``image``; writes go to the overlay only."""
    which("qemu-img", "qemu-utils")
    image = image.resolve()
    size = size or overlay_size(image.stat().st_size)
    overlay.parent.mkdir(parents=True, exist_ok=True)
    run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", "raw", overlay, str(size)],
        what="qemu-img create",
    )
    return overlay


# -- the running VM ----------------------------------------------------------


class Vm:
    """A running QEMU; iterate ``console_lines()`` to follow its serial console."""

    def __init__(self, spec: VmSpec, powerdown_timeout: float = 60) -> None:
        self.spec = spec
        self.powerdown_timeout = powerdown_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.keep = False  # set before leaving the with-block to leave it running

    def __enter__(self) -> Vm:
        which(qemu_binary(self.spec.arch), QEMU_PACKAGE)
        self.spec.console_log.write_bytes(b"")
        # qemu's own messages go to a file: a pipe nobody reads could block it
        with open(self.stderr_log, "wb") as err:
            self.proc = subprocess.Popen(
                qemu_argv(self.spec),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        self.started = time.monotonic()
        register(self.proc)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is None:
            return
        if self.keep and exc_type is None:
            unregister(self.proc)
            return
        try:
            if self.powerdown_timeout > 0 and (
                    exc_type is None or not issubclass(exc_type, KeyboardInterrupt)):
                self.powerdown(self.powerdown_timeout)
        finally:
            kill_group(self.proc)
            unregister(self.proc)

    @property
    def stderr_log(self) -> Path:
        return self.spec.console_log.with_name("qemu.log")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def peak_memory_mib(self) -> float | None:
        """QEMU's peak resident memory so far (VmHWM), or None once it is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def exited(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def stderr_tail(self) -> str:
        try:
            err = self.stderr_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(err[-3:])

    def console_lines(self, deadline: float, poll: float = 0.1) -> Iterator[str]:
        """Lines of the serial console as they are written; ends when QEMU exits
        or at ``deadline`` (time.monotonic())."""
        buf = b""
        with open(self.spec.console_log, "rb") as f:
            while True:
                chunk = f.read(65536)
                if chunk:
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        yield clean_line(raw)
                    continue
                if self.exited() is not None or time.monotonic() > deadline:
                    if buf:
                        yield clean_line(buf)
                    return
                time.sleep(poll)

    def powerdown(self, timeout: float = 60) -> bool:
        """Ask the guest to shut down (ACPI/GPIO power button); True if QEMU exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True
        try:
            qmp(self.spec.qmp_socket, "system_powerdown")
        except OSError:
            return False
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


def clean_line(raw: bytes) -> str:
    """Decode a console line, dropping CRs and terminal escape sequences."""
    text = raw.decode(errors="replace").replace("\r", "")
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\x1b":
            i += 1
            if i < len(text) and text[i] == "[":
                i += 1
                while i < len(text) and not text[i].isalpha():
                    i += 1
            i += 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def qmp(sock_path: Path, command: str, timeout: float = 5) -> dict[str, object]:
    """Send one QMP command and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        f = s.makefile("rwb")
        f.readline()  # greeting
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            while True:
                reply = json.loads(f.readline() or b"{}")
                if "event" not in reply:
                    break
        return dict(reply)


def short_tmpdir() -> Path:
    """A folder for the QMP socket: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="pibake-vm-"))
