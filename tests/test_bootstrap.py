"""The embedded default base: spec keys, the archive, the recipe, and one real build."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _bootstrap_fixtures import ARM64_SPEC, arm64_base_tar  # noqa: F401

from builder.emulate.archive import failed_suites, probe_sources
from builder.emulate.bootstrap import (
    BASE_PACKAGES,
    DEFAULT_MODULES,
    DPKG_EXCLUDES,
    PI_FAMILIES,
    BootstrapSpec,
    customize_hook,
    essential_hook,
    mmdebstrap_argv,
    native_tools,
    render_sources,
    spec_for,
    spec_key,
)
from builder.errors import ConfigError, PreflightError

SPEC = BootstrapSpec("bookworm", "arm64", "linux-image-arm64", ("vim-tiny",))

DEB822 = """Types: deb
# a comment the key must not depend on
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://archive.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""


def apt_dir(tmp_path: Path, deb822: str = DEB822, one_line: str = "") -> Path:
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    if deb822:
        (d / "sources.list.d/debian.sources").write_text(deb822)
    if one_line:
        (d / "sources.list").write_text(one_line)
    return d


def os_release(tmp_path: Path, codename: str = "bookworm") -> Path:
    p = tmp_path / "os-release"
    p.write_text(f'PRETTY_NAME="Debian"\nVERSION_CODENAME={codename}\nID=debian\n')
    return p


# --- families and keys -----------------------------------------------------------


def test_pi_families_follow_debians_raspi_images() -> None:
    assert {m: tuple(f) for m, f in PI_FAMILIES.items()} == {
        "pi0": ("armel", "linux-image-rpi", "ttyAMA0"),
        "pi1": ("armel", "linux-image-rpi", "ttyAMA0"),
        "pi2": ("armhf", "linux-image-armmp", "ttyAMA0"),
        "pi3": ("arm64", "linux-image-arm64", "ttyS1"),
        "pi4": ("arm64", "linux-image-arm64", "ttyS1"),
    }
    assert spec_for("pi3") == BootstrapSpec("bookworm", "arm64", "linux-image-arm64", ())


def test_spec_for_unknown_model() -> None:
    with pytest.raises(ConfigError) as err:
        spec_for("pi5")
    assert str(err.value) == "unknown Pi model 'pi5' (known: pi0, pi1, pi2, pi3, pi4)"


@pytest.mark.parametrize(
    "change",
    [
        {"packages": ("vim-tiny", "htop")},
        {"packages": ()},
        {"mirror": "http://mirror.invalid/debian"},
        {"initramfs_modules": DEFAULT_MODULES[:-1]},
        {"initramfs_forced": ("ext4",)},
        {"suite": "trixie"},
        {"arch": "armhf"},
        {"kernel": "linux-image-rt-arm64"},
    ],
)
def test_spec_key_changes_with_every_field(change: dict[str, object]) -> None:
    assert spec_key(dataclasses.replace(SPEC, **change)) != spec_key(SPEC)  # type: ignore[arg-type]


def test_spec_key_is_stable() -> None:
    assert spec_key(SPEC) == spec_key(BootstrapSpec(*dataclasses.astuple(SPEC)))
    assert len(spec_key(SPEC)) == 64


def test_spec_key_follows_the_host_archive(tmp_path: Path) -> None:
    other = DEB822.replace("archive.example", "other.example")
    assert spec_key(SPEC, apt_dir(tmp_path)) != spec_key(SPEC, apt_dir(tmp_path / "b", other))


# --- the archive -------------------------------------------------------------------


def test_sources_from_host_deb822(tmp_path: Path) -> None:
    text = render_sources(SPEC, apt_dir(tmp_path), os_release(tmp_path))
    assert text == (
        "Types: deb\nURIs: http://archive.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main non-free-firmware\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main non-free-firmware\n"
    )


def test_sources_repointed_at_another_suite(tmp_path: Path) -> None:
    spec = dataclasses.replace(SPEC, suite="trixie")
    text = render_sources(spec, apt_dir(tmp_path), os_release(tmp_path))
    assert "Suites: trixie trixie-updates\n" in text
    assert "Suites: trixie-security\n" in text
    assert "bookworm" not in text


def test_sources_from_one_line_list_skip_third_party(tmp_path: Path) -> None:
    one_line = (
        "# old style\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://archive.example/debian bookworm main\n"
        "deb-src http://archive.example/debian bookworm main\n"
        "deb http://vendor.example/apt stable main\n"
    )
    text = render_sources(SPEC, apt_dir(tmp_path, "", one_line), os_release(tmp_path))
    assert text == (
        "Types: deb\nURIs: http://archive.example/debian\nSuites: bookworm\n"
        "Components: main non-free-firmware\nSigned-By: /k.gpg\n"
    )


def test_sources_mirror_wins(tmp_path: Path) -> None:
    spec = dataclasses.replace(SPEC, mirror="http://127.0.0.1:3142/debian")
    assert render_sources(spec, apt_dir(tmp_path), os_release(tmp_path)) == (
        "Types: deb\nURIs: http://127.0.0.1:3142/debian\nSuites: bookworm\n"
        "Components: main non-free-firmware\n"
    )


def test_no_host_sources(tmp_path: Path) -> None:
    d = apt_dir(tmp_path, "")
    with pytest.raises(PreflightError) as err:
        render_sources(SPEC, d, os_release(tmp_path))
    assert str(err.value) == (
        f"no Debian archive for 'bookworm' in {d}/sources.list.d/*.sources or "
        f"{d}/sources.list; configure apt on this host or set a mirror"
    )


def test_no_archive_host_name_in_code() -> None:
    source = (Path(__file__).parents[1] / "builder/emulate/bootstrap.py").read_text()
    assert "debian.org" not in source


# --- the recipe ----------------------------------------------------------------------


def test_argv_reuses_debs_through_the_apt_cache(tmp_path: Path) -> None:
    argv = mmdebstrap_argv(
        SPEC, Path("/s.sources"), Path("/hooks"), Path("/o.tar"), Path("/cache dir")
    )
    assert argv[-3:] == ["bookworm", "/o.tar", "/s.sources"]
    assert "--skip=essential/unlink" in argv
    assert "--setup-hook=sync-in '/cache dir' /var/cache/apt/archives/" in argv
    sync_out = argv.index("--customize-hook=sync-out /var/cache/apt/archives '/cache dir'")
    assert sync_out > argv.index('--customize-hook=sh /hooks/customize.sh "$1"')
    include = next(a for a in argv if a.startswith("--include="))
    assert include.split("=", 1)[1].split(",") == [*BASE_PACKAGES, "linux-image-arm64", "vim-tiny"]
    assert "--format=tar" in argv and "--architectures=arm64" in argv


def test_argv_without_cache_has_no_sync(tmp_path: Path) -> None:
    argv = mmdebstrap_argv(SPEC, Path("/s"), Path("/h"), Path("/o"), None)
    assert not [a for a in argv if "sync-" in a or "essential/unlink" in a]


def test_customize_hook_builds_the_initrd_once_from_the_module_list() -> None:
    spec = dataclasses.replace(SPEC, initramfs_modules=("virtio_blk", "mmc_block"),
                               initramfs_forced=("ext4",))
    hook = customize_hook(spec)
    assert hook.count("update-initramfs -c -k all") == 1
    assert "MODULES=list" in hook
    # forced: listed in /etc/initramfs-tools/modules; drivers: only added by a hook
    assert "(the root file system)\next4\nEOF\n" in hook
    assert "\nmanual_add_modules virtio_blk mmc_block\nEOF\n" in hook
    assert hook.index("hooks/pibake-drivers") < hook.index("update-initramfs -c")
    assert 'CONSOLES="tty0 ttyS1,115200"' in hook
    armhf = customize_hook(dataclasses.replace(spec, arch="armhf"))
    assert 'CONSOLES="tty0 ttyAMA0,115200"' in armhf


def test_slow_generators_are_deferred_to_one_run() -> None:
    ess, cust = essential_hook(SPEC.suite), customize_hook(SPEC)
    for tool in ("/usr/sbin/update-initramfs", "/usr/sbin/update-ca-certificates"):
        assert f"--divert {tool}.pibake --add {tool}" in ess
        assert f"dpkg-divert --quiet --local --rename --remove {tool}" in cust
    # The real tools run after their diversions are gone.
    assert cust.index("--remove /usr/sbin/update-initramfs") < cust.index("update-initramfs -c")
    assert cust.index("--remove /usr/sbin/update-ca-certificates") < cust.index(
        "chroot \"$root\" update-ca-certificates")
    assert 'for t in rsa ecdsa ed25519; do : > "$root/etc/ssh/ssh_host_${t}_key"; done' in ess


@pytest.mark.parametrize(("suite", "depmod", "hwdb"), [
    ("bookworm", "/sbin/depmod", "/bin/systemd-hwdb"),
    ("trixie", "/usr/sbin/depmod", "/usr/bin/systemd-hwdb"),
])
def test_module_index_and_hwdb_are_written_by_the_host(suite: str, depmod: str,
                                                       hwdb: str) -> None:
    spec = dataclasses.replace(SPEC, suite=suite)
    ess, cust = essential_hook(suite), customize_hook(spec)
    assert native_tools(suite) == (depmod, hwdb)
    for tool in (depmod, hwdb):
        # the path dpkg installs in that suite is diverted, and given back first
        assert f"--divert {tool}.pibake --add {tool}" in ess
        assert cust.index(f"--rename --remove {tool}") < cust.index('depmod -b "$root"')
    # the host's tools, on the chroot's files, before the initrd needs modules.dep
    assert 'depmod -b "$root" -a "$(basename "$dir")"' in cust
    assert 'systemd-hwdb --root "$root" --usr update' in cust
    assert cust.index('depmod -b "$root"') < cust.index("update-initramfs -c")


def test_docs_man_pages_and_translations_are_not_installed() -> None:
    argv = mmdebstrap_argv(SPEC, Path("/s"), Path("/h"), Path("/o"), None)
    opts = [a.split("=", 1)[1] for a in argv if a.startswith("--dpkgopt=path-")]
    assert opts == list(DPKG_EXCLUDES)
    # licences stay; every exclude comes before the include that narrows it
    assert "path-include=/usr/share/doc/*/copyright" in opts
    assert opts.index("path-exclude=/usr/share/doc/*") < opts.index(
        "path-include=/usr/share/doc/*/copyright")


def test_customize_hook_resets_identity() -> None:
    hook = customize_hook(SPEC)
    assert 'rm -f "$root"/etc/ssh/ssh_host_*' in hook
    assert "printf 'uninitialized\\n' > \"$root/etc/machine-id\"" in hook


def test_default_modules_boot_qemu_virt() -> None:
    assert {"virtio_blk", "virtio_pci", "virtio_net", "virtio_mmio", "ext4", "vfat"} <= set(
        DEFAULT_MODULES
    )


# --- one real build ----------------------------------------------------------------


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    assert f is not None, name
    return f.read()


@pytest.mark.integration
def test_real_arm64_base(arm64_base_tar: Path, tmp_path: Path) -> None:  # noqa: F811
    with tarfile.open(arm64_base_tar) as tar:
        names = {n.removeprefix("./").rstrip("/") for n in tar.getnames()}
        byname = {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}
        kernels = sorted(n for n in names if n.startswith("boot/firmware/vmlinuz-"))
        initrds = sorted(n for n in names if n.startswith("boot/firmware/initrd.img-"))
        assert kernels and initrds, sorted(n for n in names if n.startswith("boot/"))
        initrd = _member(tar, "./" + initrds[-1])
        config = _member(tar, "./boot/firmware/config.txt").decode()
        cmdline = _member(tar, "./boot/firmware/cmdline.txt").decode()
        machine_id = _member(tar, "./etc/machine-id")
        shadow = _member(tar, "./etc/shadow").decode()
    assert len(initrd) < 15 * 1024 * 1024
    assert "arm_64bit=1" in config
    assert "root=LABEL=RASPIROOT" in cmdline
    assert {
        "boot/firmware/start4.elf",
        "boot/firmware/fixup4.dat",
        "boot/firmware/bcm2837-rpi-3-b.dtb",
        "boot/firmware/bcm2711-rpi-4-b.dtb",
    } <= names
    assert machine_id == b"uninitialized\n"
    assert not [n for n in names if n.startswith("etc/ssh/ssh_host_")]
    assert [n for n in names if n.startswith("var/lib/apt/lists/")] in (
        [],
        ["var/lib/apt/lists/partial"],
        ["var/lib/apt/lists/partial", "var/lib/apt/lists/lock"],
        ["var/lib/apt/lists/lock", "var/lib/apt/lists/partial"],
    )
    assert not [n for n in names if n.startswith("var/log/apt/") and byname[n].isfile()]
    assert "var/log/dpkg.log" not in names
    assert not [n for n in names if n.endswith(".deb")]
    root_hash = next(line for line in shadow.splitlines() if line.startswith("root:"))
    assert root_hash.split(":")[1].startswith(("!", "*"))
    # The deferred generators are back and did their one run.
    for tool in ("usr/sbin/update-initramfs", "usr/sbin/update-ca-certificates"):
        assert byname[tool].size > 100, tool
    assert "etc/ssl/certs/ca-certificates.crt" in names
    assert len([n for n in names if n.startswith("etc/ssl/certs/")]) > 100
    assert not [n for n in names if n.endswith(".pibake")]
    # depmod and systemd-hwdb are the packages' own again, and the host wrote
    # their databases: the module index for every kernel, udev's hwdb.
    for tool in native_tools(ARM64_SPEC.suite):
        # /sbin and /bin are links into /usr (merged /usr): the file is under usr/
        name = tool.lstrip("/")
        member = byname.get(name) or byname[name if name.startswith("usr/") else "usr/" + name]
        assert member.issym() or member.size > 100, tool
    versions = {n.split("/")[3] for n in names if n.startswith("usr/lib/modules/")
                and n.count("/") >= 3}
    assert versions
    for version in versions:
        for index in ("modules.dep", "modules.dep.bin", "modules.alias.bin"):
            assert byname[f"usr/lib/modules/{version}/{index}"].size > 1000, (version, index)
    assert byname["usr/lib/udev/hwdb.bin"].size > 1_000_000
    # No documentation, manual pages or translations; the licences stay (and the
    # info index install-info writes, and the locale alias database).
    assert not [n for n in names if n.startswith(("usr/share/man/", "usr/share/locale/",
                                                  "usr/share/info/"))
                and byname[n].isfile()
                and n not in ("usr/share/locale/locale.alias", "usr/share/info/dir")]
    docs = [n for n in names if n.startswith("usr/share/doc/") and byname[n].isfile()]
    assert docs and all(n.endswith("/copyright") for n in docs), docs[:5]
    # The module list went into the initrd.
    p = tmp_path / "initrd"
    p.write_bytes(initrd)
    listing = subprocess.run(["lsinitramfs", str(p)], capture_output=True, check=True)
    files = listing.stdout.decode()
    assert "virtio_blk.ko" in files
    assert "ext4.ko" in files


# --- an archive serving a broken optional index ------------------------------------


def test_render_sources_skips_the_named_suites(tmp_path: Path) -> None:
    text = render_sources(SPEC, apt_dir(tmp_path), os_release(tmp_path),
                          skip=frozenset({"bookworm-security", "bookworm-updates"}))
    assert text == (
        "Types: deb\nURIs: http://archive.example/debian\nSuites: bookworm\n"
        "Components: main non-free-firmware\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def test_failed_suites_reads_apts_errors() -> None:
    out = (
        "Get:7 http://a.example/debian-security bookworm-security/main armhf Packages [351 kB]\n"
        "E: Failed to fetch http://a.example/debian-security/dists/bookworm-security/main/"
        "binary-armhf/Packages.xz  File has unexpected size (334084 != 351124). "
        "Mirror sync in progress?\n"
        "E: Some index files failed to download. They have been ignored, or old ones used.\n"
    )
    assert failed_suites(out) == {
        "bookworm-security": "File has unexpected size (334084 != 351124). Mirror sync in progress?"
    }


def _release(suite: str, files: dict[str, bytes], lie_about: str | None = None) -> str:
    lines = [f"Suite: {suite}", f"Codename: {suite}", "Architectures: armhf",
             "Components: main", "Date: Tue, 24 Nov 2026 00:00:00 UTC", "SHA256:"]
    for name, data in files.items():
        size = len(data) + (7 if name == lie_about else 0)
        lines.append(f" {hashlib.sha256(data).hexdigest()} {size} {name}")
    return "\n".join(lines) + "\n"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[str]:
    """A local archive whose -security armhf index is not the size its Release says."""
    root = tmp_path / "www"
    packages = b"Package: hello\nVersion: 1\nArchitecture: armhf\n\n"
    for suite, lie in (("bookworm", None), ("bookworm-security", "main/binary-armhf/Packages")):
        d = root / "dists" / suite
        (d / "main/binary-armhf").mkdir(parents=True)
        (d / "main/binary-armhf/Packages").write_bytes(packages)
        (d / "Release").write_text(_release(suite, {"main/binary-armhf/Packages": packages},
                                            lie))
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join()


def test_probe_finds_the_suite_whose_index_is_broken(archive: str) -> None:
    sources = (
        f"Types: deb\nURIs: {archive}\nSuites: bookworm bookworm-security\n"
        "Components: main\nTrusted: yes\n"
    )
    failed = probe_sources(sources, "armhf")
    assert list(failed) == ["bookworm-security"]
    assert failed["bookworm-security"].startswith("File has unexpected size (47 != 54)")


def test_an_archive_that_cannot_be_reached_is_named_not_its_packages(tmp_path: Path) -> None:
    # A port nothing listens on: apt warns (W:) instead of failing, and every
    # package then looked missing ("Unable to locate package apt").
    import socket

    from builder.emulate.bootstrap import usable_sources
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = dataclasses.replace(SPEC, mirror=f"http://127.0.0.1:{port}/debian")
    with pytest.raises(PreflightError) as err:
        usable_sources(spec, render_sources(spec))
    msg = str(err.value)
    assert msg.startswith("the archive's bookworm/arm64 package index cannot be fetched: "), msg
    assert "127.0.0.1" in msg and "Unable to locate" not in msg
    assert msg.endswith("check the host's apt sources or set a mirror in cluster.yaml")
