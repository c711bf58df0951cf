"""The emulated ARM chroot: run ARM programs in an extracted root tree.

Each command runs in a private mount namespace that mounts /proc, /sys, /dev,
/run and /tmp and then chroots, so every mount dies with the command and no
host mount is ever left behind, even after Ctrl-C. qemu-user-static runs the
ARM programs through binfmt_misc.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from builder import cache, log
from builder.errors import BuildError, ConfigError, PreflightError
from builder.progress import Meter, Progress, ticking
from builder.run import run, run_lines

# Debian architecture -> binfmt_misc handler of qemu-user-static.
ARCHES: Mapping[str, str] = {"armel": "qemu-arm", "armhf": "qemu-arm", "arm64": "qemu-aarch64"}

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def preflight_emulation(
    arch: str, binfmt_dir: Path = BINFMT_DIR, euid: int | None = None,
) -> None:
    """Check that ARM programs of ``arch`` can run here; one line says what to fix.

    Checked once per process and architecture (a build asks before the base,
    the role and each chroot)."""
    default = binfmt_dir == BINFMT_DIR and euid is None
    if default and arch in _emulation_ok:
        return
    _check_emulation(arch, binfmt_dir, euid)
    if default:
        _emulation_ok.add(arch)


_emulation_ok: set[str] = set()


def _check_emulation(arch: str, binfmt_dir: Path, euid: int | None) -> None:
    handler = ARCHES.get(arch)
    if handler is None:
        known = ", ".join(sorted(ARCHES))
        raise ConfigError(f"unknown architecture '{arch}' (known: {known})")
    if (os.geteuid() if euid is None else euid) != 0:
        raise PreflightError(
            "run as root (sudo): the emulated ARM chroot needs chroot and mount namespaces"
        )
    if not (binfmt_dir / "register").exists():
        raise PreflightError(
            f"binfmt_misc is not mounted at {binfmt_dir}; mount it: "
            f"mount -t binfmt_misc binfmt_misc {binfmt_dir}"
        )
    install = (
        f"apt-get install qemu-user-static binfmt-support && update-binfmts --enable {handler}"
    )
    status = binfmt_dir / "status"
    if status.exists() and status.read_text().strip() != "enabled":
        raise PreflightError(f"binfmt_misc is disabled; enable it: echo 1 > {status}")
    entry = binfmt_dir / handler
    if not entry.exists():
        raise PreflightError(
            f"no binfmt_misc handler '{handler}' registered for {arch}; install it: {install}"
        )
    fields = _binfmt_fields(entry.read_text())
    if "enabled" not in fields:
        raise PreflightError(
            f"binfmt_misc handler '{handler}' is disabled; enable it: update-binfmts --enable "
            f"{handler}"
        )
    interpreter = fields.get("interpreter", "")
    if "F" not in fields.get("flags:", "") and not Path(interpreter).exists():
        raise PreflightError(
            f"binfmt_misc handler '{handler}' has no F flag and its interpreter "
            f"'{interpreter}' is missing; install it: {install}"
        )


def _binfmt_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        fields[name] = value.strip()
    return fields


# Mounts made inside the command's own namespace, then chroot and a clean env.
_NS_SCRIPT = """set -e
root="$1"; shift
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
if [ -n "${PIBAKE_APT_CACHE:-}" ]; then
  mount --bind "$PIBAKE_APT_CACHE" "$root/var/cache/apt/archives"
fi
exec env -i "$@"
"""

_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    "APT_LISTCHANGES_FRONTEND": "none",
}

_APT_OPTS = [
    "-o", "Dpkg::Options::=--force-confold",
    "-o", "Dpkg::Options::=--force-confdef",
    "-o", "Acquire::Languages=none",
]

_POLICY = "#!/bin/sh\n# managed by pibake: no service starts in the build chroot\nexit 101\n"
_ASIDE = ".pibake-aside"


class _Saved:
    """A path's state before we changed it: absent, a symlink, or a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.link: str | None = None
        self.data: bytes | None = None
        self.mode = 0o644
        if path.is_symlink():
            self.link = os.readlink(path)
        elif path.exists():
            self.data = path.read_bytes()
            self.mode = path.stat().st_mode & 0o7777

    def restore(self) -> None:
        if self.path.is_symlink() or self.path.exists():
            self.path.unlink()
        if self.link is not None:
            os.symlink(self.link, self.path)
        elif self.data is not None:
            self.path.write_bytes(self.data)
            os.chmod(self.path, self.mode)


class EmulatedChroot:
    """Run ARM programs in the root tree ``root``; undo every trace on exit."""

    def __init__(self, root: Path, arch: str, apt_cache: Path | None = None) -> None:
        self.root = root.resolve()
        self.arch = arch
        self.apt_cache = apt_cache.resolve() if apt_cache is not None else None
        self._saved: list[_Saved] = []
        self._preload_aside = False
        self._entered = False

    # --- context ---------------------------------------------------------

    def __enter__(self) -> EmulatedChroot:
        preflight_emulation(self.arch)
        for sub in ("proc", "sys", "dev", "run", "tmp", "etc", "usr/sbin"):
            if not self._path(sub).is_dir():
                raise BuildError(f"{self.root}: not a root file system (no /{sub}); "
                                 "extract the base again")
        self._entered = True
        try:
            self._setup()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cleanup()

    def _setup(self) -> None:
        policy = self._path("usr/sbin/policy-rc.d")
        self._saved.append(_Saved(policy))
        _unlink(policy)
        policy.write_text(_POLICY)
        os.chmod(policy, 0o755)

        preload = self._path("etc/ld.so.preload")
        if preload.is_symlink() or preload.exists():
            os.replace(preload, preload.with_name(preload.name + _ASIDE))
            self._preload_aside = True

        resolv = self._path("etc/resolv.conf")
        self._saved.append(_Saved(resolv))
        _unlink(resolv)
        host = Path("/etc/resolv.conf")
        resolv.write_bytes(host.read_bytes() if host.exists() else b"")

        if self.apt_cache is not None:
            (self.apt_cache / "partial").mkdir(parents=True, exist_ok=True)
            self._path("var/cache/apt/archives").mkdir(parents=True, exist_ok=True)

    def _cleanup(self) -> None:
        if not self._entered:
            return
        self._entered = False
        for saved in reversed(self._saved):
            saved.restore()
        self._saved.clear()
        if self._preload_aside:
            preload = self._path("etc/ld.so.preload")
            aside = preload.with_name(preload.name + _ASIDE)
            if preload.is_symlink() or preload.exists():
                # A package installed during the session wrote its own: keep that.
                aside.unlink()
            else:
                os.replace(aside, preload)
            self._preload_aside = False
        self._clean_apt()
        _empty_dir(self._path("tmp"))
        hooks = self._path("var/lib/pibake")
        if hooks.is_dir():
            shutil.rmtree(hooks)

    def _clean_apt(self) -> None:
        lists = self._path("var/lib/apt/lists")
        if lists.is_dir():
            _empty_dir(lists)
            (lists / "partial").mkdir(mode=0o700)
        for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                        "var/cache/apt/archives/partial/*", "var/log/apt/*"):
            for path in self.root.glob(pattern):
                _remove(path)
        for name in ("var/log/dpkg.log", "var/log/alternatives.log"):
            _unlink(self._path(name))

    # --- commands --------------------------------------------------------

    def run(
        self, argv: list[str], env: dict[str, str] | None = None, what: str | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> bytes:
        """Run ``argv`` inside the tree; return its stdout (or hand each output
        line to ``on_line`` as it comes and return nothing)."""
        if not self._entered:
            raise RuntimeError("EmulatedChroot.run() outside its 'with' block")
        # The build's one timestamp reaches maintainer scripts (initramfs, shadow).
        stamp = {k: os.environ[k] for k in ("SOURCE_DATE_EPOCH",) if k in os.environ}
        full_env = {**_BASE_ENV, **stamp, **(env or {})}
        outer = {"PIBAKE_APT_CACHE": str(self.apt_cache) if self.apt_cache else ""}
        cmd = [
            "unshare", "--mount", "--propagation", "private", "--fork", "--",
            "/bin/sh", "-c", _NS_SCRIPT, "pibake-chroot", str(self.root),
            *[f"{k}={v}" for k, v in sorted(full_env.items())],
            "chroot", str(self.root), *argv,
        ]
        label = what or f"{argv[0]} in {self.arch} chroot"
        if on_line is not None:
            run_lines(cmd, on_line, env=outer, what=label)
            return b""
        return run(cmd, env=outer, capture=True, what=label).stdout

    def apt_install(self, packages: list[str]) -> None:
        """Install ``packages`` from the image's own sources; no-op when all are there."""
        if not packages:
            return
        installed = self.dpkg_versions()
        missing = [p for p in packages if _package_name(p) not in installed]
        if not missing:
            log.info(f"    apt: {', '.join(packages)} already installed")
            return
        with self._shared_archives():
            self.run(["apt-get", *_APT_OPTS, "update"], what="apt-get update in chroot")
            meter = Meter(Progress(f"apt-get install ({len(missing)} named)"))
            with ticking(meter.progress):
                self.run(
                    ["apt-get", *_APT_OPTS, "install", "-y", "--no-install-recommends",
                     *packages],
                    what=f"apt-get install {' '.join(packages)}", on_line=meter.feed,
                )

    @contextmanager
    def _shared_archives(self) -> Iterator[None]:
        """apt-get refuses to start while another holds the archives folder's lock,
        and builds share that folder (two terminals, make -j): wait our turn."""
        if self.apt_cache is None:
            yield
            return
        with cache.exclusive(self.apt_cache / ".pibake-apt.lock",
                             "    apt: another build is using the package cache; waiting for it",
                             log.info):
            yield

    def run_hook(self, script: Path, env: dict[str, str]) -> None:
        """Copy ``script`` into the tree, run it there, remove it."""
        if not os.access(script, os.X_OK):
            raise BuildError(f"{script}: hook is not executable; run: chmod +x {script}")
        inside = Path("/var/lib/pibake/hooks") / script.name
        target = self._path(str(inside).lstrip("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(script, target)
        os.chmod(target, 0o755)
        try:
            self.run([str(inside)], env=env, what=f"hook {script}")
        finally:
            target.unlink(missing_ok=True)

    def dpkg_versions(self) -> dict[str, str]:
        """Installed packages and versions, read from the tree (no emulation)."""
        return dpkg_versions(self.root)

    def _path(self, rel: str) -> Path:
        path = self.root / rel
        parent = path.parent.resolve()
        if parent != self.root and self.root not in parent.parents:
            raise BuildError(f"{self.root}/{rel}: leads outside the tree; refusing to write it")
        return path


def dpkg_versions(root: Path) -> dict[str, str]:
    """``{package: version}`` of what var/lib/dpkg/status marks installed."""
    status = root / "var/lib/dpkg/status"
    if not status.exists():
        return {}
    versions: dict[str, str] = {}
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if not fields.get("Status", "").endswith(" installed") or "Package" not in fields:
            continue
        versions[fields["Package"]] = fields.get("Version", "")
    return versions


def _package_name(spec: str) -> str:
    for sep in ("=", ":", "/"):
        spec = spec.split(sep, 1)[0]
    return spec


def _unlink(path: Path) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _empty_dir(path: Path) -> None:
    if not path.is_dir():
        return
    for entry in sorted(path.iterdir()):
        _remove(entry)


def mounts_under(root: Path) -> Iterator[str]:
    """Mount points under ``root`` in this mount namespace (for checks and tests)."""
    prefix = str(root.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            yield point
