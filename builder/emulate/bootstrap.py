"""The embedded default base: Debian bootstrapped with mmdebstrap, per Pi family.

The archive is the host's apt configuration (its deb822 or one-line sources,
re-pointed at the wanted suite) unless the spec names a mirror. The initramfs is
built once, at the end, from an explicit module list: under emulation every
``update-initramfs`` run costs minutes, and a ``MODULES=most`` initrd is six
times larger than one that carries what a Pi or QEMU ``-M virt`` needs to boot.
"""

from __future__ import annotations

import re
import shlex
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from builder import cache, log
from builder.emulate.archive import require_served, scratch_apt
from builder.emulate.chroot import preflight_emulation
from builder.errors import ConfigError, PreflightError
from builder.progress import Meter, Progress, ticking
from builder.run import run_lines, which

# Bump when the recipe below changes in a way that changes the result.
RECIPE_VERSION = 1

# Label the image assembler gives the root partition; raspi-firmware writes it
# into cmdline.txt.
ROOT_LABEL = "RASPIROOT"


class PiFamily(NamedTuple):
    arch: str
    kernel: str
    console: str   # the serial console with Debian's kernels and upstream device trees


# As Debian's own Raspberry Pi images do. The one serial-console table: the
# host layer's cmdline.txt, raspi-firmware's CONSOLES and raspi3b boots read it.
PI_FAMILIES: Mapping[str, PiFamily] = {
    "pi0": PiFamily("armel", "linux-image-rpi", "ttyAMA0"),
    "pi1": PiFamily("armel", "linux-image-rpi", "ttyAMA0"),
    "pi2": PiFamily("armhf", "linux-image-armmp", "ttyAMA0"),
    "pi3": PiFamily("arm64", "linux-image-arm64", "ttyS1"),
    "pi4": PiFamily("arm64", "linux-image-arm64", "ttyS1"),
}


def console_for_arch(arch: str) -> str:
    """The serial console of the Pi family a bootstrapped ``arch`` base is for."""
    return next((f.console for f in PI_FAMILIES.values() if f.arch == arch), "ttyAMA0")

# What every base gets on top of minbase: enough to boot, be reached over SSH
# and grow its root partition on first boot.
BASE_PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "udev",
    "kmod",
    "openssh-server",
    "raspi-firmware",
    "initramfs-tools",
    "e2fsprogs",
    "fdisk",
    "dosfstools",
    "iproute2",
    "netbase",
    "systemd-timesyncd",
    "sudo",
    "ca-certificates",
)

# raspi-firmware lives in non-free-firmware.
COMPONENTS: tuple[str, ...] = ("main", "non-free-firmware")

# Storage, file systems and network for the Pi boards and for QEMU -M virt, put
# into the initrd by a hook and loaded by its udev only where the hardware is:
# loading all of them on every boot (the MODULES list's way) cost 6 s of an
# emulated boot for USB and SD drivers that QEMU's virt board does not have.
DEFAULT_MODULES: tuple[str, ...] = (
    "virtio_blk",
    "virtio_pci",
    "virtio_net",
    "virtio_mmio",
    "virtio_scsi",
    "ext4",
    "crc32c_generic",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "mmc_block",
    "sdhci_iproc",
    "sdhci_pltfm",
    "bcm2835",
    "bcm2835_dma",
    "dwc2",
    "usb_storage",
    "uas",
    "sd_mod",
    "smsc95xx",
    "lan78xx",
    "pcie_brcmstb",
    "xhci_pci",
    "reset_raspberrypi",
)
# Loaded by the initrd on every boot: the root file system's driver.
FORCED_MODULES: tuple[str, ...] = ("ext4", "crc32c_generic")



@dataclass(frozen=True)
class BootstrapSpec:
    suite: str
    arch: str
    kernel: str
    packages: tuple[str, ...]
    mirror: str | None = None
    initramfs_modules: tuple[str, ...] = DEFAULT_MODULES
    initramfs_forced: tuple[str, ...] = FORCED_MODULES


def spec_for(
    model: str,
    suite: str = "bookworm",
    packages: tuple[str, ...] = (),
    mirror: str | None = None,
) -> BootstrapSpec:
    """The spec for a Pi model name (``pi0`` ... ``pi4``)."""
    family = PI_FAMILIES.get(model)
    if family is None:
        known = ", ".join(sorted(PI_FAMILIES))
        raise ConfigError(f"unknown Pi model '{model}' (known: {known})")
    return BootstrapSpec(suite, family.arch, family.kernel, packages, mirror)


def spec_key(spec: BootstrapSpec, apt_dir: Path = Path("/etc/apt")) -> str:
    """Content key of the base this spec produces (recipe, spec, archive)."""
    try:
        sources = render_sources(spec, apt_dir)
    except PreflightError:
        sources = ""
    return cache.key_of(
        "bootstrap", RECIPE_VERSION, asdict(spec), BASE_PACKAGES, sources,
        essential_hook(spec.suite), customize_hook(spec),
    )


# --- the archive -----------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    signed_by: str | None


def _host_codename(os_release: Path) -> str | None:
    try:
        text = os_release.read_text()
    except OSError:
        return None
    m = re.search(r"^VERSION_CODENAME=\"?([^\"\n]+)", text, re.M)
    return m.group(1) if m else None


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                stanzas.append(fields)
            fields, last = {}, None
        elif line[0].isspace() and last:
            fields[last] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            last = name.strip().lower()
            fields[last] = value.strip()
    return stanzas


def _host_sources(apt_dir: Path) -> list[_Source]:
    found: list[_Source] = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for st in _deb822_stanzas(path.read_text()):
            if "deb" not in st.get("types", "").split() or st.get("enabled", "yes") == "no":
                continue
            found.append(_Source(tuple(st.get("uris", "").split()),
                                 tuple(st.get("suites", "").split()), st.get("signed-by")))
    lists = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) < 3 or words[0] != "deb":
                continue
            signed_by = None
            if words[1].startswith("["):
                opts: list[str] = []
                while words and not words[1].endswith("]"):
                    opts.append(words.pop(1))
                opts.append(words.pop(1))
                for opt in " ".join(opts).strip("[]").split():
                    if opt.startswith("signed-by="):
                        signed_by = opt.split("=", 1)[1]
            found.append(_Source((words[1],), (words[2],), signed_by))
    return found


def render_sources(
    spec: BootstrapSpec, apt_dir: Path = Path("/etc/apt"),
    os_release: Path = Path("/etc/os-release"), skip: frozenset[str] = frozenset(),
) -> str:
    """deb822 sources for the base: the spec's mirror, else the host's archive
    with its suites (``bookworm``, ``-updates``, ``-security``) re-pointed at
    ``spec.suite``, leaving out the suites in ``skip``."""
    components = " ".join(COMPONENTS)
    if spec.mirror:
        return f"Types: deb\nURIs: {spec.mirror}\nSuites: {spec.suite}\nComponents: {components}\n"
    host = _host_codename(os_release)
    stanzas: list[str] = []
    for src in _host_sources(apt_dir):
        suites = []
        for suite in src.suites:
            base, sep, suffix = suite.partition("-")
            if host is None or base != host:
                continue  # a third-party or foreign-release entry
            if spec.suite + sep + suffix not in skip:
                suites.append(spec.suite + sep + suffix)
        if not suites or not src.uris:
            continue
        text = f"Types: deb\nURIs: {' '.join(src.uris)}\nSuites: {' '.join(suites)}\n"
        text += f"Components: {components}\n"
        if src.signed_by:
            text += f"Signed-By: {src.signed_by}\n"
        stanzas.append(text)
    if not stanzas:
        raise PreflightError(
            f"no Debian archive for '{spec.suite}' in {apt_dir}/sources.list.d/*.sources or "
            f"{apt_dir}/sources.list; configure apt on this host or set a mirror"
        )
    return "\n".join(stanzas)


class Sources(NamedTuple):
    text: str
    suites: tuple[str, ...]           # what the base is built from
    skipped: tuple[str, ...]          # -updates/-security left out: their index is broken
    debs: int = 0                     # .debs the package set needs


def usable_sources(spec: BootstrapSpec, sources_text: str,
                   apt_cache: Path | None = None) -> Sources:
    """The sources without the ``-updates``/``-security`` suites whose index the
    archive serves broken for this arch (seen here: a -security Packages.xz of
    the wrong size for armhf, which apt retries cannot fix); the main suite
    stays required. Every .deb the bootstrap will download must be served."""
    with scratch_apt(spec.arch, sources_text=sources_text) as apt:
        failed = apt.update()
        if spec.suite in failed:
            raise PreflightError(
                f"the archive's {spec.suite}/{spec.arch} package index cannot be fetched: "
                f"{failed[spec.suite]}; check the host's apt sources or set a mirror in "
                "cluster.yaml"
            )
        packages = [*apt.essential(), *BASE_PACKAGES, spec.kernel, *spec.packages]
        count = require_served(
            apt, packages, suite=spec.suite, what="the base",
            fix=f"set cluster.mirror to an archive that serves {spec.suite} {spec.arch} "
                f"in full, or use another base for this host (e.g. base: {_other(spec.suite)})",
            apt_cache=apt_cache)
        log.info(f"    archive: {count} .debs for {spec.suite}/{spec.arch}, all served")
    for suite, reason in sorted(failed.items()):
        log.notice(f"{suite}/{spec.arch}: index cannot be fetched ({reason}); "
                   f"bootstrapping without {suite}")
    if failed and not spec.mirror:
        sources_text = render_sources(spec, skip=frozenset(failed))
    suites = tuple(re.findall(r"^Suites: (.*)$", sources_text, re.M))
    used = tuple(s for line in suites for s in line.split())
    return Sources(sources_text, used, tuple(sorted(failed)), count)


def _other(suite: str) -> str:
    return "debian-bookworm" if suite != "bookworm" else "debian-trixie"


# --- the hooks ---------------------------------------------------------------

# Run once at the end instead of once per package or trigger: each run costs
# from 30 s (update-ca-certificates) to minutes (update-initramfs) emulated.
_DEFERRED = ("/usr/sbin/update-initramfs", "/usr/sbin/update-ca-certificates")

# Generators whose output does not depend on the machine that runs them: the
# module index (depmod) and udev's hardware database (systemd-hwdb). Emulated
# they cost about 55 s and 50 s of a cold arm64 base; the host's own tools
# write the same databases from the chroot's files in about 7 s in all.
# Debian moved them under /usr in trixie; dpkg diverts the path it installs.
_NATIVE_OLD = ("/sbin/depmod", "/bin/systemd-hwdb")
_NATIVE = ("/usr/sbin/depmod", "/usr/bin/systemd-hwdb")
_OLD_LAYOUT = frozenset({"stretch", "buster", "bullseye", "bookworm"})

# Documentation, manual pages and translations are not installed (dpkg
# path-excludes, kept in the image so that later installs skip them too);
# licences stay. About 11% of a base's bytes and 4,000 files fewer to unpack.
DPKG_EXCLUDES: tuple[str, ...] = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)


def native_tools(suite: str) -> tuple[str, ...]:
    """Where ``suite``'s packages install depmod and systemd-hwdb."""
    return _NATIVE_OLD if suite in _OLD_LAYOUT else _NATIVE


def _divert_to_noop(paths: tuple[str, ...]) -> list[str]:
    lines = []
    for path in paths:
        lines += [
            f'chroot "$root" dpkg-divert --quiet --local --rename --divert {path}.pibake '
            f"--add {path}",
            f"printf '#!/bin/sh\\nexit 0\\n' > \"$root{path}\"",
            f'chmod 755 "$root{path}"',
        ]
    return lines


def _undivert(paths: tuple[str, ...]) -> str:
    return "".join(
        f'rm -f "$root{path}"\n'
        f'chroot "$root" dpkg-divert --quiet --local --rename --remove {path}\n'
        for path in paths
    )


def essential_hook(suite: str) -> str:
    """Divert the slow generators to no-ops while packages install. Placeholder
    SSH host keys keep openssh-server from generating keys under emulation that
    are deleted anyway."""
    lines = ["set -eu", 'root="$1"', 'mkdir -p "$root/etc/ssh" "$root/usr/sbin"',
             'for t in rsa ecdsa ed25519; do : > "$root/etc/ssh/ssh_host_${t}_key"; done']
    lines += _divert_to_noop(_DEFERRED + native_tools(suite))
    return "\n".join(lines) + "\n"


def customize_hook(spec: BootstrapSpec) -> str:
    """Write the module index and the hardware database with the host's tools,
    configure initramfs and raspi-firmware, build the initrd once, reset identity."""
    modules = " ".join(spec.initramfs_modules)
    forced = "\n".join(spec.initramfs_forced)
    consoles = f"tty0 {console_for_arch(spec.arch)},115200"
    undivert = _undivert(_DEFERRED + native_tools(spec.suite))
    return f"""set -eu
root="$1"
{undivert}for dir in "$root"/lib/modules/*/; do
    if [ -d "$dir" ]; then depmod -b "$root" -a "$(basename "$dir")"; fi
done
if [ -d "$root/usr/lib/udev/hwdb.d" ]; then systemd-hwdb --root "$root" --usr update; fi
chroot "$root" update-ca-certificates >/dev/null
printf 'MODULES=list\\n' > "$root/etc/initramfs-tools/conf.d/pibake.conf"
cat >> "$root/etc/initramfs-tools/modules" <<'EOF'
# added by pibake: loaded on every boot (the root file system)
{forced}
EOF
cat > "$root/etc/initramfs-tools/hooks/pibake-drivers" <<'EOF'
#!/bin/sh
# added by pibake: storage drivers for Pi boards and QEMU -M virt, in the initrd
# but loaded by udev only where the hardware is
case "$1" in prereqs) exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
manual_add_modules {modules}
EOF
chmod 755 "$root/etc/initramfs-tools/hooks/pibake-drivers"
cat > "$root/etc/default/raspi-firmware" <<'EOF'
# managed by pibake
ROOTPART="LABEL={ROOT_LABEL}"
CONSOLES="{consoles}"
EOF
mkdir -p "$root/boot/firmware"
chroot "$root" update-initramfs -c -k all
rm -f "$root"/etc/ssh/ssh_host_*
printf 'uninitialized\\n' > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
printf 'localhost\\n' > "$root/etc/hostname"
rm -f "$root/etc/resolv.conf"
chroot "$root" passwd --lock root >/dev/null
rm -rf "$root"/var/log/apt/* "$root/var/log/dpkg.log" "$root/var/log/alternatives.log"
rm -f "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old
rm -f "$root/var/cache/ldconfig/aux-cache"
"""


# --- the build ---------------------------------------------------------------


def mmdebstrap_argv(
    spec: BootstrapSpec, sources: Path, hooks: Path, out: Path, apt_cache: Path | None,
) -> list[str]:
    packages = [*BASE_PACKAGES, spec.kernel, *spec.packages]
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        f"--architectures={spec.arch}",
        "--format=tar",
        f"--include={','.join(packages)}",
        "--aptopt=Acquire::Languages \"none\"",
        "--aptopt=Acquire::Retries \"3\"",
        "--dpkgopt=force-confold",
        *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES),
        # Its machine-id reset writes an empty file; customize.sh writes
        # "uninitialized" and does the rest of that cleanup itself.
        "--skip=cleanup/reproducible",
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
        f"--essential-hook=sh {shlex.quote(str(hooks / 'essential.sh'))} \"$1\"",
    ]
    if apt_cache is not None:
        q = shlex.quote(str(apt_cache))
        argv += [
            "--skip=essential/unlink",
            '--setup-hook=mkdir -p "$1/var/cache/apt/archives"',
            f"--setup-hook=sync-in {q} /var/cache/apt/archives/",
        ]
    argv.append(f"--customize-hook=sh {shlex.quote(str(hooks / 'customize.sh'))} \"$1\"")
    if apt_cache is not None:
        # After customize.sh so that nothing it does can add to the shared cache.
        argv.append(f"--customize-hook=sync-out /var/cache/apt/archives {q}")
    argv += [spec.suite, str(out), str(sources)]
    return argv


def bootstrap_rootfs(spec: BootstrapSpec, out_tar: Path, apt_cache: Path | None) -> Sources:
    """Bootstrap ``spec`` and write its root file system as a tar, atomically;
    return the sources it was built from."""
    preflight_emulation(spec.arch)
    which("mmdebstrap", "mmdebstrap")
    if apt_cache is not None:
        apt_cache.mkdir(parents=True, exist_ok=True)
    with log.step(f"check the archive for {spec.suite}/{spec.arch}"):
        sources = usable_sources(spec, render_sources(spec), apt_cache)
    with log.step(f"bootstrap {spec.suite}/{spec.arch} with {spec.kernel}"), \
            tempfile.TemporaryDirectory(prefix="pibake-bootstrap-") as tmp:
        hooks = Path(tmp)
        (hooks / "essential.sh").write_text(essential_hook(spec.suite))
        (hooks / "customize.sh").write_text(customize_hook(spec))
        sources_file = hooks / "pibake.sources"
        sources_file.write_text(sources.text)
        with cache.atomic_file(out_tar) as tmp_tar:
            argv = mmdebstrap_argv(spec, sources_file, hooks, tmp_tar, apt_cache)
            _run_with_progress(argv, spec, sources.debs)
    return sources


def _run_with_progress(argv: list[str], spec: BootstrapSpec, total: int) -> None:
    """mmdebstrap with its phases shown as they pass, and timed."""
    label = f"bootstrap {spec.suite}/{spec.arch}"
    times: dict[str, float] = {}

    def timed(phase: str, seconds: float) -> None:
        times[phase] = times.get(phase, 0.0) + seconds

    meter = Meter(Progress(label, total or None), on_phase=timed)
    with ticking(meter.progress):
        run_lines([*argv[:1], "--verbose", *argv[1:]], meter.feed,
                  what=f"mmdebstrap {spec.suite}/{spec.arch}")
    meter.close()
    log.info("    phases: " + ", ".join(f"{p} {t:.0f}s" for p, t in times.items() if t >= 0.5))
    log.info("    slowest to configure: " + ", ".join(f"{p} {t:.0f}s" for p, t in meter.slowest()))
