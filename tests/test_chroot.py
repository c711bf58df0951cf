"""The emulated ARM chroot: preflight messages, setup and undo, and a real run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from _bootstrap_fixtures import arm64_base_tar, arm64_tree  # noqa: F401

from builder.emulate.chroot import EmulatedChroot, dpkg_versions, mounts_under, preflight_emulation
from builder.errors import BuildError, ConfigError, PreflightError

ENTRY = """enabled
interpreter {interp}
flags: {flags}
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""


def fake_binfmt(
    tmp_path: Path,
    handler: str = "qemu-aarch64",
    state: str = "enabled",
    flags: str = "PF",
    interp: str = "/nonexistent/qemu",
) -> Path:
    d = tmp_path / "binfmt_misc"
    d.mkdir()
    (d / "register").write_text("")
    (d / "status").write_text("enabled\n")
    text = ENTRY.format(interp=interp, flags=flags).replace("enabled", state, 1)
    (d / handler).write_text(text)
    return d


# --- preflight -----------------------------------------------------------------


def test_preflight_passes_with_f_flag(tmp_path: Path) -> None:
    preflight_emulation("arm64", fake_binfmt(tmp_path), euid=0)


def test_preflight_passes_without_f_flag_when_interpreter_exists(tmp_path: Path) -> None:
    interp = tmp_path / "qemu-arm-static"
    interp.write_text("")
    preflight_emulation(
        "armhf", fake_binfmt(tmp_path, "qemu-arm", flags="OC", interp=str(interp)), euid=0
    )


def test_preflight_needs_root(tmp_path: Path) -> None:
    with pytest.raises(PreflightError) as err:
        preflight_emulation("arm64", fake_binfmt(tmp_path), euid=1000)
    assert str(err.value) == (
        "run as root (sudo): the emulated ARM chroot needs chroot and mount namespaces"
    )


def test_preflight_binfmt_not_mounted(tmp_path: Path) -> None:
    with pytest.raises(PreflightError) as err:
        preflight_emulation("arm64", tmp_path / "empty", euid=0)
    d = tmp_path / "empty"
    assert str(err.value) == (
        f"binfmt_misc is not mounted at {d}; mount it: mount -t binfmt_misc binfmt_misc {d}"
    )


def test_preflight_binfmt_disabled_globally(tmp_path: Path) -> None:
    d = fake_binfmt(tmp_path)
    (d / "status").write_text("disabled\n")
    with pytest.raises(PreflightError) as err:
        preflight_emulation("arm64", d, euid=0)
    assert str(err.value) == f"binfmt_misc is disabled; enable it: echo 1 > {d}/status"


@pytest.mark.parametrize(
    ("arch", "handler"), [("arm64", "qemu-aarch64"), ("armhf", "qemu-arm"), ("armel", "qemu-arm")]
)
def test_preflight_handler_missing(tmp_path: Path, arch: str, handler: str) -> None:
    d = fake_binfmt(tmp_path, handler="qemu-mips")
    with pytest.raises(PreflightError) as err:
        preflight_emulation(arch, d, euid=0)
    assert str(err.value) == (
        f"no binfmt_misc handler '{handler}' registered for {arch}; install it: "
        f"apt-get install qemu-user-static binfmt-support && update-binfmts --enable {handler}"
    )


def test_preflight_handler_disabled(tmp_path: Path) -> None:
    with pytest.raises(PreflightError) as err:
        preflight_emulation("arm64", fake_binfmt(tmp_path, state="disabled"), euid=0)
    assert str(err.value) == (
        "binfmt_misc handler 'qemu-aarch64' is disabled; enable it: "
        "update-binfmts --enable qemu-aarch64"
    )


def test_preflight_no_f_flag_and_no_interpreter(tmp_path: Path) -> None:
    with pytest.raises(PreflightError) as err:
        preflight_emulation("arm64", fake_binfmt(tmp_path, flags="OC"), euid=0)
    assert str(err.value) == (
        "binfmt_misc handler 'qemu-aarch64' has no F flag and its interpreter "
        "'/nonexistent/qemu' is missing; install it: apt-get install qemu-user-static "
        "binfmt-support && update-binfmts --enable qemu-aarch64"
    )


def test_preflight_unknown_arch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        preflight_emulation("mips", fake_binfmt(tmp_path), euid=0)
    assert str(err.value) == "unknown architecture 'mips' (known: arm64, armel, armhf)"


# --- setup and undo, on a fake tree (nothing is executed in it) -------------


def fake_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for d in (
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "etc",
        "usr/sbin",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
        "var/lib/dpkg",
    ):
        (root / d).mkdir(parents=True)
    preload = b"/usr/lib/arm-linux-gnueabihf/libarmmem-${PLATFORM}.so\n"
    (root / "etc/ld.so.preload").write_bytes(preload)
    os.chmod(root / "etc/ld.so.preload", 0o600)
    os.symlink("../run/systemd/resolve/stub-resolv.conf", root / "etc/resolv.conf")
    return root


def test_enter_prepares_and_exit_restores(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    preload_before = (root / "etc/ld.so.preload").read_bytes()
    with EmulatedChroot(root, "arm64"):
        policy = root / "usr/sbin/policy-rc.d"
        assert policy.read_text().endswith("exit 101\n")
        assert os.access(policy, os.X_OK)
        assert not (root / "etc/ld.so.preload").exists()
        assert not (root / "etc/resolv.conf").is_symlink()
        assert (root / "etc/resolv.conf").read_bytes() == Path("/etc/resolv.conf").read_bytes()
        # What apt and dpkg leave behind, to be cleaned on exit.
        (root / "var/lib/apt/lists/deb_dists_bookworm_InRelease").write_text("x")
        (root / "var/lib/apt/lists/partial/junk").write_text("x")
        (root / "var/cache/apt/pkgcache.bin").write_text("x")
        (root / "var/cache/apt/archives/hello_1_arm64.deb").write_text("x")
        (root / "var/log/apt/history.log").write_text("x")
        (root / "var/log/dpkg.log").write_text("x")
        (root / "var/log/alternatives.log").write_text("x")
        (root / "tmp/scratch").mkdir()
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert (root / "etc/ld.so.preload").read_bytes() == preload_before
    assert (root / "etc/ld.so.preload").stat().st_mode & 0o777 == 0o600
    assert os.readlink(root / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert sorted(p.name for p in (root / "var/lib/apt/lists").iterdir()) == ["partial"]
    assert list((root / "var/lib/apt/lists/partial").iterdir()) == []
    assert not (root / "var/cache/apt/pkgcache.bin").exists()
    assert list((root / "var/cache/apt/archives").glob("*.deb")) == []
    assert list((root / "var/log/apt").iterdir()) == []
    assert not (root / "var/log/dpkg.log").exists()
    assert not (root / "var/log/alternatives.log").exists()
    assert list((root / "tmp").iterdir()) == []


def test_exit_restores_on_error_and_absent_files_stay_absent(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    (root / "etc/ld.so.preload").unlink()
    (root / "etc/resolv.conf").unlink()
    with pytest.raises(ValueError), EmulatedChroot(root, "arm64"):
        raise ValueError("boom")
    assert not (root / "etc/ld.so.preload").exists()
    assert not (root / "etc/resolv.conf").exists()
    assert not (root / "usr/sbin/policy-rc.d").exists()


def test_existing_policy_rc_d_is_restored(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 0\n")
    with EmulatedChroot(root, "arm64"):
        assert (root / "usr/sbin/policy-rc.d").read_text().endswith("exit 101\n")
    assert (root / "usr/sbin/policy-rc.d").read_text() == "#!/bin/sh\nexit 0\n"


def test_not_a_root_tree(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as err, EmulatedChroot(tmp_path, "arm64"):
        pass
    assert str(err.value) == (
        f"{tmp_path}: not a root file system (no /proc); extract the base again"
    )


def test_escaping_symlink_is_refused(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    (root / "etc").rename(root / "etc-real")
    os.symlink("/etc", root / "etc")
    with pytest.raises(BuildError) as err, EmulatedChroot(root, "arm64"):
        pass
    assert str(err.value) == (
        f"{root}/etc/ld.so.preload: leads outside the tree; refusing to write it"
    )
    assert not (root / "usr/sbin/policy-rc.d").exists()


def test_dpkg_versions_reads_installed_only(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: hello\nStatus: install ok installed\nArchitecture: arm64\nVersion: 2.10-3\n"
        "Description: hi\n more\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\n"
        "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u10\n"
    )
    assert dpkg_versions(tmp_path) == {"hello": "2.10-3", "libc6": "2.36-9+deb12u10"}


def test_run_outside_with_block_is_a_bug(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        EmulatedChroot(fake_tree(tmp_path), "arm64").run(["true"])


# --- the real thing ----------------------------------------------------------


@pytest.mark.integration
def test_real_chroot_installs_and_runs(arm64_tree: Path, tmp_path: Path) -> None:  # noqa: F811
    root = arm64_tree
    preload = b"/usr/lib/does-not-exist/libarmmem-${PLATFORM}.so\n"
    (root / "etc/ld.so.preload").write_bytes(preload)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    os.symlink("../run/systemd/resolve/stub-resolv.conf", resolv)
    apt_cache = tmp_path / "apt-cache"
    with EmulatedChroot(root, "arm64", apt_cache=apt_cache) as ch:
        # A preload of a missing library would make every program warn; it is gone.
        assert ch.run(["uname", "-m"]).strip() == b"aarch64"
        ch.apt_install(["hello"])
        assert ch.run(["hello"]).strip() == b"Hello, world!"
        assert "hello" in ch.dpkg_versions()
        # policy-rc.d forbids starting services.
        rc = subprocess.run(
            ["chroot", str(root), "/usr/sbin/policy-rc.d", "ssh", "start"], check=False
        ).returncode
        assert rc == 101
        hook = tmp_path / "10-mark.sh"
        hook.write_text('#!/bin/sh\nset -e\necho "$MARK" > /etc/pibake-mark\n')
        hook.chmod(0o755)
        ch.run_hook(hook, {"MARK": "layer-x"})
        bad = tmp_path / "20-fail.sh"
        bad.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
        bad.chmod(0o755)
        with pytest.raises(BuildError) as err:
            ch.run_hook(bad, {})
        # A second install of what is there does no apt-get update.
        ch.apt_install(["hello"])
    assert str(err.value) == f"hook {bad} failed (exit 3): broken"
    assert (root / "etc/pibake-mark").read_text() == "layer-x\n"
    assert not (root / "var/lib/pibake").exists()
    assert list(apt_cache.glob("hello_*_arm64.deb")), "the deb went to the shared apt cache"
    assert (root / "etc/ld.so.preload").read_bytes() == preload
    assert os.readlink(resolv) == "../run/systemd/resolve/stub-resolv.conf"
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert sorted(p.name for p in (root / "var/lib/apt/lists").iterdir()) == ["partial"]
    assert list(mounts_under(root)) == []
    assert not (root / "var/log/dpkg.log").exists()


def test_shared_archives_lock_makes_a_second_build_wait(tmp_path: Path) -> None:
    """Two builds sharing the package cache: the second waits for the first
    instead of apt-get failing on the archives lock."""
    import subprocess
    import sys
    import threading
    import time

    cache = tmp_path / "apt"
    cache.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(cache / '.pibake-apt.lock')!r}, 'a')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(1.5)\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    chroot = EmulatedChroot(fake_tree(tmp_path), "arm64", apt_cache=cache)
    entered: list[float] = []
    start = time.monotonic()

    def second_build() -> None:
        with chroot._shared_archives():
            entered.append(time.monotonic() - start)

    worker = threading.Thread(target=second_build)
    worker.start()
    worker.join(10)
    holder.wait()
    assert entered and entered[0] >= 1.0, entered  # it waited for the holder to let go
