"""``pibake boot``: boot an output image under QEMU and watch its first boot.

    boot_image(image, host=..., machine=Machine.virt, timeout=300, keep=False,
               ssh_port=None, lan=None, mac=None, overlay=None,
               extra_cmdline=(), ssh_user=None) -> BootResult

The image is never written: QEMU runs on a qcow2 overlay (bigger than the
image, so the grow-root step has work to do). Pass ``overlay`` to keep it and
boot the same disk again (a second boot must report ``done`` without running
any step again). The serial console is followed; ``pibake-firstboot:`` lines
are echoed as they come; ``pibake-firstboot: done`` returns a BootResult,
``failed at NN-name``, an early QEMU exit or the timeout raise BootError with
the last console lines. The guest is then powered off cleanly (QMP power
button, kill after 60 s) unless ``keep``.

Machines:
- ``virt`` (default): QEMU's generic ARM board with virtio disk and network.
  The kernel and initrd are the image's own (``vmlinuz-*``/``initrd.img-*`` on
  the boot partition, as Debian's raspi-firmware puts them: arm64 and armmp
  kernels). The command line is the image's cmdline.txt with root= and
  console= replaced (``root=PARTUUID=<disk id>-02 console=ttyAMA0``).
  Exercises: the image's user space, kernel, initrd, fstab, systemd units and
  first-boot steps. Does not exercise: the Pi firmware, config.txt, the Pi
  device tree, Pi drivers (SD controller, Wi-Fi, GPIO).
- ``raspi3b``: QEMU's Pi 3 model with the image's arm64 kernel and the Pi 3
  device tree from the boot partition, console on the mini-UART (ttyS1), USB
  networking. Closer to hardware (Pi device tree and drivers), still no
  firmware/config.txt; slower, a single TCG thread.
Images whose kernel only runs on Pi hardware (Raspbian's kernel*.img, Debian's
``rpi`` flavour for Pi 1/Zero) boot on ``virt`` with a Debian generic kernel
that runs their user space (builder.vm.kernels: armmp for 32-bit, arm64 for
64-bit, picked from the ELF header of the image's /usr/bin/dpkg). Its initrd
is the kit's; its modules are written into the overlay's /lib/modules (never
into the image) before QEMU starts. Exercises the image's user space, fstab,
units and first-boot steps; not its own kernel, initrd or Pi drivers.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from builder import log
from builder.emulate.bootstrap import PI_FAMILIES
from builder.errors import BootError, BuildError
from builder.image.assemble import (
    DiskLayout,
    list_vfat,
    partuuid,
    read_disk,
    read_ext4,
    read_vfat,
)
from builder.run import kill_group
from builder.vm.qemu import (
    RASPI3B_CMDLINE,
    VIRT_CMDLINE,
    Arch,
    LanSpec,
    Machine,
    NodeLan,
    Vm,
    VmSpec,
    choose_accel,
    create_overlay,
    free_port,
    mac_for,
    pi3_mac_for,
    short_tmpdir,
    ssh_banner,
)

MARKER = "pibake-firstboot: "
TAIL_LINES = 20


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path | None
    dtb: Path | None
    cmdline: str
    arch: Arch
    # a generic kernel's modules (tar of <version>/...) for the overlay's /lib/modules
    modules: Path | None = None
    node_lan: NodeLan | None = None  # raspi3b: the node's LAN, for QEMU's user network


@dataclass
class BootResult:
    host: str
    seconds: float  # QEMU start to "done"
    progress: list[str]
    ssh_port: int
    overlay: Path | None  # None when it was temporary and is gone
    pid: int | None = None  # the still running qemu when keep
    ssh_command: str | None = None
    console_log: Path | None = None
    peak_memory_mib: float | None = None  # QEMU's peak resident memory up to "done"


# -- reading the image -----------------------------------------------------


def disk_layout(image: Path) -> DiskLayout:
    """The image's partitions, read by the image package's one reader."""
    try:
        return read_disk(image)
    except BuildError as exc:
        raise BootError(str(exc)) from None


def list_fat(image: Path, layout: DiskLayout) -> list[str]:
    return list_vfat(image, offset=layout.boot_start)


def copy_fat(image: Path, layout: DiskLayout, name: str, dest: Path) -> Path:
    dest.write_bytes(read_vfat(image, f"/{name}", offset=layout.boot_start))
    return dest


def root_partuuid(layout: DiskLayout) -> str:
    return partuuid(layout.disk_id, 2)


def _version_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def pick_kernel(image: Path, names: list[str]) -> tuple[str, str | None, Arch] | None:
    """The newest generic ``vmlinuz-VERSION`` on the boot partition, its initrd
    and arch; None when the partition has only kernels that need Pi hardware."""
    kernels = sorted((n for n in names if n.startswith("vmlinuz-")), key=_version_key)
    generic = [k for k in kernels if k.endswith("-arm64") or "armmp" in k]
    if not generic:
        if kernels or any(re.fullmatch(r"kernel\w*\.img", n) for n in names):
            return None
        raise BootError(f"{image}: no kernel on the boot partition (no vmlinuz-* or "
                        "kernel*.img); is it a pibake output image?")
    kernel = generic[-1]
    version = kernel.removeprefix("vmlinuz-")
    arch = Arch.arm64 if version.endswith("arm64") else Arch.arm
    initrd = f"initrd.img-{version}"
    return kernel, initrd if initrd in names else None, arch


# ELF e_machine values
_ELF_ARCH = {40: Arch.arm, 183: Arch.arm64}


def userland_arch(image: Path, layout: DiskLayout) -> Arch:
    """The architecture of the image's user space, from its /usr/bin/dpkg."""
    try:
        out = read_ext4(image, "/usr/bin/dpkg", offset=layout.root_start)
    except BuildError:
        out = b""
    machine = int.from_bytes(out[18:20], "little") if out[:4] == b"\x7fELF" else None
    if machine not in _ELF_ARCH:
        raise BootError(f"{image}: cannot tell the user space's architecture from "
                        "/usr/bin/dpkg on partition 2; is it a Debian-based ARM image?")
    return _ELF_ARCH[machine]


def virt_cmdline(image_cmdline: str, partuuid: str, console: str, extra: tuple[str, ...]) -> str:
    """The image's own cmdline.txt with root=, console= and Pi-only options replaced."""
    drop = ("root=", "console=", "init=/usr/lib/raspi-config", "kgdboc=", "rootfstype=")
    keep = [a for a in image_cmdline.split() if not a.startswith(drop)]
    args = [f"root=PARTUUID={partuuid}", "rootfstype=ext4", *keep, f"console={console}"]
    if "rootwait" not in args:
        args.append("rootwait")
    return " ".join([*args, *extra])


def extract_boot_files(
    image: Path, workdir: Path, machine: Machine, extra_cmdline: tuple[str, ...]
) -> BootFiles:
    layout = disk_layout(image)
    names = list_fat(image, layout)
    if machine is Machine.virt:
        extra_cmdline = (*VIRT_CMDLINE, *extra_cmdline)
    cmdline = ""
    if "cmdline.txt" in names:
        cmdline = copy_fat(image, layout, "cmdline.txt", workdir / "cmdline.txt").read_text()
    picked = pick_kernel(image, names)
    if picked is None:
        return generic_boot_files(image, layout, machine, names, cmdline, extra_cmdline)
    kernel, initrd, arch = picked
    dtb = None
    console = "ttyAMA0"
    node_lan: NodeLan | None = None
    if machine is Machine.raspi3b:
        if arch is not Arch.arm64:
            raise BootError(f"{image}: --machine raspi3b needs an arm64 kernel, found {kernel}")
        dtbs = [n for n in names if n in ("bcm2837-rpi-3-b.dtb", "bcm2710-rpi-3-b.dtb")]
        if not dtbs:
            raise BootError(f"{image}: no bcm2837-rpi-3-b.dtb on the boot partition for raspi3b")
        dtb = copy_fat(image, layout, dtbs[0], workdir / dtbs[0])
        console = f"{PI_FAMILIES['pi3'].console},115200"
        node_lan = lan_of(image, layout)
        extra_cmdline = (*extra_cmdline, *RASPI3B_CMDLINE)
    return BootFiles(
        kernel=copy_fat(image, layout, kernel, workdir / kernel),
        initrd=copy_fat(image, layout, initrd, workdir / initrd) if initrd else None,
        dtb=dtb,
        cmdline=virt_cmdline(cmdline, root_partuuid(layout), console, extra_cmdline),
        arch=arch,
        node_lan=node_lan,
    )


# Where the host layer puts a systemd-networkd node's static address.
LAN_NETWORK_FILE = "/etc/systemd/network/10-pibake-lan.network"


def parse_lan(text: str) -> NodeLan | None:
    """The static address, gateway and matched MAC of a .network file."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("Address", "Gateway", "MACAddress"):
            values.setdefault(key.strip(), value.strip())
    if "Address" not in values:
        return None
    try:
        address = ipaddress.IPv4Interface(values["Address"])
        gateway = ipaddress.IPv4Address(values["Gateway"]) if "Gateway" in values else None
    except ValueError:
        return None
    return NodeLan(address, gateway, values.get("MACAddress", "").lower() or None)


def lan_of(image: Path, layout: DiskLayout) -> NodeLan | None:
    """The node's LAN as its image configures it (systemd-networkd bases);
    None when the image has no such file."""
    try:
        text = read_ext4(image, LAN_NETWORK_FILE, offset=layout.root_start).decode(
            errors="replace")
    except BuildError:
        return None
    return parse_lan(text)


def generic_boot_files(
    image: Path, layout: DiskLayout, machine: Machine, names: list[str], cmdline: str,
    extra_cmdline: tuple[str, ...],
) -> BootFiles:
    """Boot files for an image whose kernel needs Pi hardware: a generic kit."""
    from builder.vm.kernels import kernel_kit

    pi_kernels = ", ".join(n for n in names if n.startswith(("vmlinuz-", "kernel")))
    if machine is not Machine.virt:
        raise BootError(f"{image}: --machine {machine} needs the image's own generic arm64 "
                        f"kernel, found only {pi_kernels}; use --machine virt")
    arch = userland_arch(image, layout)
    kit = kernel_kit(arch)
    log.notice(f"{image.name}: its kernel ({pi_kernels}) needs Pi hardware; booting Debian's "
               f"{kit.version} with its modules in the overlay")
    return BootFiles(
        kernel=kit.kernel,
        initrd=kit.initrd,
        dtb=None,
        cmdline=virt_cmdline(cmdline, root_partuuid(layout), "ttyAMA0", extra_cmdline),
        arch=arch,
        modules=kit.modules,
    )


# -- following the console -------------------------------------------------


@dataclass
class ConsoleWatch:
    """Parses console lines: collects progress lines, keeps the last lines."""

    progress: list[str] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    done: bool = False
    failed_step: str | None = None

    def feed(self, line: str) -> str | None:
        """Take one console line; return its progress message if it has one."""
        self.tail.append(line)
        at = line.find(MARKER)
        if at < 0:
            return None
        msg = line[at + len(MARKER) :].strip()
        self.progress.append(msg)
        if msg == "done":
            self.done = True
        elif m := re.fullmatch(r"failed at (\S+)", msg):
            self.failed_step = m.group(1)
        return msg

    def last_lines(self) -> str:
        return " | ".join(line.strip() for line in self.tail if line.strip())


# -- the engine ------------------------------------------------------------


@dataclass(frozen=True)
class NodeBoot:
    """One VM of a group: which image, as which host, with which NIC MAC."""

    host: str
    image: Path
    mac: str | None = None
    lan: LanSpec | None = None  # the node's own LAN (one per inventory network); else the group's


def _vm_spec(node: NodeBoot, workdir: Path, disk: Path, tmp: Path, *, machine: Machine,
             ssh_port: int | None, lan: LanSpec | None, extra_cmdline: tuple[str, ...],
             smp: int, memory_mib: int) -> VmSpec:
    """Boot files out of the image, the overlay, and the VM's spec."""
    if not node.image.is_file():
        raise BootError(f"{node.image}: no such image; build it first: pibake build {node.host}")
    files = extract_boot_files(node.image, workdir, machine, extra_cmdline)
    if not disk.exists():
        prepare_overlay(node.image, disk, files)
    return VmSpec(
        disk=disk,
        kernel=files.kernel,
        initrd=files.initrd,
        dtb=files.dtb,
        append=files.cmdline,
        console_log=workdir / "console.log",
        qmp_socket=tmp / "qmp.sock",
        ssh_port=ssh_port or free_port(),
        mac=_nic_mac(node, machine, files),
        arch=files.arch,
        machine=machine,
        smp=smp,
        memory_mib=memory_mib,
        accel=choose_accel(files.arch) if machine is Machine.virt else "tcg",
        lan=lan,
        mgmt_mac=mac_for(f"{node.host}/mgmt"),
        node_lan=files.node_lan,
    )


def _nic_mac(node: NodeBoot, machine: Machine, files: BootFiles) -> str:
    if node.mac:
        return node.mac
    if machine is Machine.raspi3b:
        if files.node_lan is not None and files.node_lan.mac:
            return files.node_lan.mac
        return pi3_mac_for(node.host)
    return mac_for(node.host)


def boot_image(
    image: Path,
    *,
    host: str,
    machine: Machine = Machine.virt,
    timeout: float = 300,
    keep: bool = False,
    ssh_port: int | None = None,
    lan: LanSpec | None = None,
    mac: str | None = None,
    overlay: Path | None = None,
    extra_cmdline: tuple[str, ...] = (),
    ssh_user: str | None = None,
    known_hosts: Path | None = None,
    smp: int = 2,
    memory_mib: int = 512,
) -> BootResult:
    if not image.is_file():
        raise BootError(f"{image}: no such image; build it first: pibake build {host}")
    tmp = short_tmpdir()
    if overlay is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"pibake-boot-{host}-"))
        disk = workdir / "overlay.qcow2"
    else:
        # next to a kept overlay, so its console log survives for a look
        workdir = overlay.parent / f"{overlay.name}.boot"
        workdir.mkdir(parents=True, exist_ok=True)
        disk = overlay
    try:
        spec = _vm_spec(NodeBoot(host, image, mac), workdir, disk, tmp, machine=machine,
                        ssh_port=ssh_port, lan=lan, extra_cmdline=extra_cmdline, smp=smp,
                        memory_mib=memory_mib)
        port = spec.ssh_port
        # A kept overlay is powered off cleanly (QMP system_powerdown), so it can
        # boot again. A throwaway overlay is deleted right after: QEMU is simply
        # stopped (a clean shutdown cost 60 of `make boot`'s 87 s of wall time).
        throwaway = overlay is None and not keep
        with Vm(spec, powerdown_timeout=0 if throwaway else 60) as vm:
            seconds, progress = watch_console(vm, host, timeout)
            result = BootResult(
                host=host,
                seconds=seconds,
                progress=progress,
                ssh_port=port,
                overlay=disk if keep or overlay is not None else None,
                console_log=spec.console_log if keep or overlay is not None else None,
                peak_memory_mib=vm.peak_memory_mib(),
            )
            if keep:
                wait_for_sshd(vm, host, port, vm.started + timeout + 120)
                vm.keep = True
                result.pid = vm.pid
                user = f"{ssh_user}@" if ssh_user else ""
                checks = host_key_options(host, known_hosts) if known_hosts else []
                result.ssh_command = " ".join(["ssh", "-p", str(port), *checks,
                                               f"{user}127.0.0.1"])
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if overlay is None and not keep:
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class GroupVm:
    """A running VM of a group: its first-boot result and the handle to stop it."""

    host: str
    vm: Vm
    result: BootResult

    def peak_memory_mib(self) -> float | None:
        return self.vm.peak_memory_mib()

    def stop(self) -> None:
        """Stop this VM at once (a node dying); its overlay is thrown away."""
        if self.vm.proc is not None:
            kill_group(self.vm.proc)


@contextmanager
def boot_group(nodes: Sequence[NodeBoot], *, lan: LanSpec | None = None, timeout: float = 900,
               smp: int = 1, memory_mib: int = 512) -> Iterator[dict[str, GroupVm]]:
    """Boot several images together on one virtual LAN, each on a throwaway
    overlay, and wait with one deadline until every first boot is done.

    Yields the running VMs by host; every VM is stopped and reaped when the
    block ends, whether it succeeds, fails or is interrupted. A node whose first
    boot fails (or misses the deadline) fails the whole group with its own line.
    """
    with ExitStack() as stack:
        vms: dict[str, Vm] = {}
        for node in nodes:
            workdir = Path(tempfile.mkdtemp(prefix=f"pibake-boot-{node.host}-"))
            stack.callback(shutil.rmtree, workdir, True)
            tmp = short_tmpdir()
            stack.callback(shutil.rmtree, tmp, True)
            spec = _vm_spec(node, workdir, workdir / "overlay.qcow2", tmp,
                            machine=Machine.virt, ssh_port=None, lan=node.lan or lan,
                            extra_cmdline=(),
                            smp=smp, memory_mib=memory_mib)
            vms[node.host] = stack.enter_context(Vm(spec, powerdown_timeout=0))
        deadline = time.monotonic() + timeout
        # the watchers end when their VM does; on Ctrl-C or an error the VMs are
        # stopped by the stack at once instead of the pool waiting for the deadline
        pool = ThreadPoolExecutor(max_workers=len(vms))
        stack.callback(pool.shutdown, wait=False, cancel_futures=True)
        futures = {host: pool.submit(watch_console, vm, host, deadline - vm.started, True)
                   for host, vm in vms.items()}
        errors = []
        done: dict[str, GroupVm] = {}
        for host, fut in futures.items():
            try:
                seconds, progress = fut.result()
            except BootError as exc:
                errors.append(str(exc))
                continue
            vm = vms[host]
            try:
                wait_for_sshd(vm, host, vm.spec.ssh_port, deadline + 120)
            except BootError as exc:
                errors.append(str(exc))
                continue
            done[host] = GroupVm(host, vm, BootResult(
                host=host, seconds=seconds, progress=progress, ssh_port=vm.spec.ssh_port,
                overlay=None, pid=vm.pid, peak_memory_mib=vm.peak_memory_mib()))
        if errors:
            raise BootError(errors[0] + (f" (and {len(errors) - 1} more nodes failed)"
                                         if len(errors) > 1 else ""))
        yield done


def prepare_overlay(image: Path, disk: Path, files: BootFiles) -> None:
    """Create the overlay, with a generic kernel's modules in it when booting one;
    it gets its final name only when complete, so a kept one is never half done."""
    if files.modules is None:
        create_overlay(image, disk)
        return
    from builder.image.guestfs_io import add_tree

    tmp = disk.with_name(f".{disk.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        create_overlay(image, tmp)
        with log.step(f"add {files.kernel.name.removeprefix('vmlinuz-')} modules to the overlay"):
            add_tree(tmp, files.modules, "/lib/modules", partition=2)
        tmp.rename(disk)
    finally:
        tmp.unlink(missing_ok=True)


def watch_console(vm: Vm, host: str, timeout: float,
                  retried: bool = False) -> tuple[float, list[str]]:
    """Follow the console until done: (seconds from QEMU start, progress
    messages); BootError on a failed step, an early QEMU exit or the timeout.

    ``retried``: a node among its peers fails a join step while a peer is not
    up yet, and the runner tries it again (RestartSec); such a failure is not
    the end, and the deadline's message names the step still failing."""
    watch = ConsoleWatch()
    still_failing = ""
    for line in vm.console_lines(deadline=vm.started + timeout):
        msg = watch.feed(line)
        if msg is not None:
            log.info(f"{host}: {MARKER}{msg}")
        if watch.done:
            return time.monotonic() - vm.started, watch.progress
        if watch.failed_step and retried:
            failed = [m for m in watch.progress if m.startswith(f"{watch.failed_step} failed")]
            still_failing = f"; step {failed[-1] if failed else watch.failed_step} (retried)"
            watch.failed_step = None
        elif watch.failed_step:
            raise BootError(
                f"{host}: first-boot step {watch.failed_step} failed; "
                f"last console lines: {watch.last_lines()}"
            )
    code = vm.exited()
    if code is not None:
        err = vm.stderr_tail()
        raise BootError(
            f"{host}: qemu exited (code {code}) before the first boot finished"
            f"{': ' + err if err else ''}; last console lines: {watch.last_lines() or 'none'}"
        )
    raise BootError(
        f"{host}: no 'pibake-firstboot: done' within {timeout:.0f}s{still_failing}; raise the "
        f"timeout or read the console; last console lines: {watch.last_lines() or 'none'}"
    )


def wait_for_sshd(vm: Vm, host: str, port: int, deadline: float) -> None:
    """Return once the node's sshd answers on its forwarded port. "done" is
    printed by the first-boot runner, and sshd may still be starting then (seen
    under load: the first ssh was reset); a caller that logs in next must not
    race it. BootError when QEMU exits or the deadline passes first."""
    while ssh_banner(port) is None:
        code = vm.exited()
        if code is not None:
            raise BootError(f"{host}: qemu exited (code {code}) after the first boot, "
                            "before its sshd answered")
        if time.monotonic() > deadline:
            raise BootError(f"{host}: first boot done, but its sshd did not answer on "
                            f"127.0.0.1:{port}; read the console log: is ssh.service enabled?")
        time.sleep(1)


def host_key_options(host: str, known_hosts: Path) -> list[str]:
    """Strict host key checking against the cluster's host CA: the forwarded
    port is checked as HOST (its certificate's principal), with only the store's
    ``@cert-authority`` line as known hosts."""
    return [
        "-o", f"HostKeyAlias={host}", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
    ]  # fmt: skip


def ssh_argv(port: int, user: str, key: Path, command: str, *, host: str,
             known_hosts: Path) -> list[str]:
    """An ssh command line to a booted VM (for tests), verifying its host key."""
    return [
        "ssh", "-p", str(port), "-i", str(key), *host_key_options(host, known_hosts),
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
        f"{user}@127.0.0.1", command,
    ]  # fmt: skip
