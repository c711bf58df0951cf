"""build_image(): inventory -> base rootfs -> role images -> host image -> outputs.

Each stage is a function of its inputs and cached by a hash of them:

- base: a root file system tarball, bootstrapped with mmdebstrap or taken out
  of a downloaded image with libguestfs (``<cache>/rootfs/<key>/``);
- role: the base plus the profile's layers (files, packages, hooks) run in an
  emulated ARM chroot, stored as ready-made ext4 and FAT partition images
  (``<cache>/roles/<key>/``);
- host: a copy of the role's partition images with the host delta written
  into them (debugfs, mtools), assembled into a disk image. No ARM program runs
  here, so a host whose role is cached builds in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import __version__, cache, log
from builder.content.checkers import check_rendered
from builder.content.hostlayer import RoleFacts, disk_id
from builder.content.identity import host_identity
from builder.content.render import render_host
from builder.errors import BuildError, NoSpaceError
from builder.image.assemble import (
    assemble_disk,
    ext4_size_for,
    make_ext4,
    make_vfat,
    partuuid,
)
from builder.image.inputs import image_inputs
from builder.image.outputs import Compression, compress, image_mode, write_checksums, write_manifest
from builder.image.reproducible import (
    normalize_tree,
    pin_inode_ctimes,
    pin_source_date_epoch,
    source_date_epoch,
)
from builder.inventory.bases import Base, BaseKind
from builder.inventory.config import Inventory
from builder.inventory.layers import Layer
from builder.run import run, which

RECIPE_VERSION = 1  # bump when a stage's recipe changes what it produces


@dataclass(frozen=True)
class BaseArtifact:
    name: str
    key: str
    dir: Path
    arch: str
    suite: str
    boot_mount: str
    cmdline: str
    source_sha256: str      # the downloaded image's sha256, or the bootstrap tarball's
    suites: tuple[str, ...] = ()    # the archive suites a bootstrap used
    skipped: tuple[str, ...] = ()   # -updates/-security left out (broken index)

    @property
    def tar(self) -> Path:
        return self.dir / "rootfs.tar"


@dataclass(frozen=True)
class RoleArtifact:
    key: str
    dir: Path
    facts: RoleFacts
    packages: dict[str, str]

    @property
    def root(self) -> Path:
        return self.dir / "root.ext4"

    @property
    def boot(self) -> Path:
        return self.dir / "boot.vfat"


@dataclass(frozen=True)
class BuildResult:
    image: Path
    sha256: str
    role_cached: bool
    seconds: float
    skipped_suites: tuple[str, ...] = ()   # the base was built without these


def apt_cache_dir() -> Path:
    path = cache.cache_dir() / "apt"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- base --------------------------------------------------------------------


def base_artifact(inv: Inventory, host: str) -> BaseArtifact:
    profile = inv.profile(host)
    node = inv.node(host)
    base = profile.base
    arch = base.arch_for(node.model)
    if base.kind is BaseKind.bootstrap:
        return bootstrap_base(base, str(node.model), arch, inv.cluster.mirror)
    return _image_base(base, arch)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    meta = folder / "meta.json"
    if not meta.is_file():
        return None
    data: dict[str, Any] = json.loads(meta.read_text())
    return data


def bootstrap_base(base: Base, model: str, arch: str, mirror: str | None) -> BaseArtifact:
    from builder.emulate.bootstrap import bootstrap_rootfs, spec_for, spec_key

    spec = spec_for(model, base.suite, (), mirror)
    key = spec_key(spec)
    folder = cache.cache_dir() / "rootfs" / key
    meta = _read_meta(folder)
    if meta is None:
        from builder.emulate.chroot import preflight_emulation

        preflight_emulation(arch)
        with log.step(f"bootstrap {base.name} {arch} ({spec.kernel})"), \
                cache.atomic_dir(folder) as tmp:
            sources = bootstrap_rootfs(spec, tmp / "rootfs.tar", apt_cache_dir())
            meta = {"name": base.name, "arch": arch, "suite": base.suite,
                    "boot_mount": base.boot_mount, "cmdline": "",
                    "source_sha256": cache.sha256_file(tmp / "rootfs.tar"),
                    "suites": list(sources.suites), "skipped_suites": list(sources.skipped)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return BaseArtifact(base.name, key, folder, arch, base.suite, meta["boot_mount"],
                        meta["cmdline"], meta["source_sha256"],
                        tuple(meta.get("suites", [base.suite])),
                        tuple(meta.get("skipped_suites", [])))


def _image_base(base: Base, arch: str) -> BaseArtifact:
    from builder.image.download import fetch
    from builder.image.guestfs_io import extract_image

    assert base.url is not None and base.sha256 is not None
    key = cache.key_of("image-base", RECIPE_VERSION, base.sha256)
    folder = cache.cache_dir() / "rootfs" / key
    meta = _read_meta(folder)
    if meta is None:
        img = fetch(base.url, base.sha256, name=base.name)
        with cache.atomic_dir(folder) as tmp:
            layout = extract_image(img, tmp / "rootfs.tar")
            meta = {"name": base.name, "arch": arch, "suite": base.suite,
                    "boot_mount": layout.boot_mount, "cmdline": layout.cmdline,
                    "source_sha256": base.sha256}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return BaseArtifact(base.name, key, folder, arch, base.suite, meta["boot_mount"],
                        meta["cmdline"], meta["source_sha256"])


# --- role --------------------------------------------------------------------


def hook_env(inv: Inventory, base: BaseArtifact, layer: Layer,
             vars: dict[str, Any]) -> dict[str, str]:
    """What a hooks.d script sees: the build's facts and the layer's own vars.

    Only vars a hook mentions are passed (and enter the role's cache key), so
    per-host values used by templates alone never split the role cache.
    """
    env = {
        "PIBAKE_LAYER": layer.name,
        "PIBAKE_SUITE": base.suite,
        "PIBAKE_ARCH": base.arch,
        "PIBAKE_ADMIN_USER": inv.cluster.admin.user,
        "PIBAKE_TIMEZONE": inv.cluster.timezone,
        "PIBAKE_DOMAIN": inv.cluster.domain,
    }
    for key, value in layer.hook_vars(vars).items():
        env[key.upper()] = _env_value(value)
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def role_key(inv: Inventory, host: str, base: BaseArtifact) -> str:
    vars = inv.host_vars(host)
    parts = []
    for name in inv.profile(host).layers:
        layer = inv.layers[name]
        parts.append([name, layer.build_hash, hook_env(inv, base, layer, vars),
                      list(layer.packages_for(base.suite))])
    return cache.key_of("role", RECIPE_VERSION, base.key, base.boot_mount,
                        inv.profile(host).base.fs_compat, parts)


def role_artifact(inv: Inventory, host: str, base: BaseArtifact) -> tuple[RoleArtifact, bool]:
    key = role_key(inv, host, base)
    folder = cache.cache_dir() / "roles" / key
    meta = _read_meta(folder)
    cached = meta is not None
    if meta is None:
        meta = _build_role(inv, host, base, folder)
    facts = RoleFacts(passwd=meta["passwd"], cmdline=meta["cmdline"],
                      dhcpcd_conf=meta["dhcpcd_conf"])
    return RoleArtifact(key, folder, facts, meta["packages"]), cached


def copy_layer_files(layer: Layer, tree: Path) -> None:
    """files/ into the tree as is: modes kept, owned by root, symlinks as symlinks."""
    for item in layer.files:
        dest = tree / item.dest.lstrip("/")
        if item.kind == "dir":
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                raise BuildError(f"{layer.shown}/files{item.dest}: the image has a "
                                 "non-folder there; remove it in a hook first")
            dest.mkdir(parents=True, exist_ok=True)
            os.chmod(dest, item.mode)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            if dest.is_dir() and not dest.is_symlink():
                raise BuildError(f"{layer.shown}/files{item.dest}: the image has a folder "
                                 "there; a file cannot replace it")
            dest.unlink()
        if item.kind == "symlink":
            os.symlink(item.target, dest)
            os.lchown(dest, 0, 0)
        else:
            shutil.copyfile(item.src, dest)
            os.chown(dest, 0, 0)
            os.chmod(dest, item.mode)


def _build_role(inv: Inventory, host: str, base: BaseArtifact, folder: Path) -> dict[str, Any]:
    from builder.emulate.chroot import EmulatedChroot, dpkg_versions, preflight_emulation

    preflight_emulation(base.arch)
    profile = inv.profile(host)
    vars = inv.host_vars(host)
    work_root = cache.cache_dir() / "work"
    work_root.mkdir(exist_ok=True)
    cache.clean_stale(work_root)
    with tempfile.TemporaryDirectory(dir=work_root, prefix=f".role.tmp-{os.getpid()}-") as w:
        work = Path(w)
        tree = work / "root"
        tree.mkdir()
        with log.step("unpack base"):
            run([which("tar", "tar"), "-x", "-p", "--numeric-owner", "--xattrs",
                 "--xattrs-include=*", "-f", base.tar, "-C", tree], what="tar")
        if profile.base.kind is BaseKind.bootstrap:
            _check_role_archive(inv, host, base, tree)
        with EmulatedChroot(tree, base.arch, apt_cache_dir()) as chroot:
            for name in profile.layers:
                layer = inv.layers[name]
                with log.step(f"layer {name}"):
                    copy_layer_files(layer, tree)
                    wanted = list(layer.packages_for(base.suite))
                    if wanted:
                        chroot.apt_install(wanted)
                    env = hook_env(inv, base, layer, vars)
                    for hook in layer.hooks:
                        chroot.run_hook(hook, env)
        lock_passwords(tree)
        packages = dpkg_versions(tree)
        facts = {
            "passwd": _read_text(tree / "etc/passwd"),
            "cmdline": base.cmdline,
            "dhcpcd_conf": _read_text(tree / "etc/dhcpcd.conf"),
        }
        boot_src = tree / base.boot_mount.lstrip("/")
        boot_tree = work / "boot"
        if boot_src.is_dir():
            os.replace(boot_src, boot_tree)
        else:
            boot_tree.mkdir()
        boot_src.mkdir(mode=0o755, parents=True, exist_ok=True)
        with log.step("partition images"), cache.atomic_dir(folder) as tmp:
            epoch = source_date_epoch(inv.root)
            normalize_tree(tree, epoch)
            normalize_tree(boot_tree, epoch)
            fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pibake-role:{folder.name}"))
            make_ext4(tree, tmp / "root.ext4", size=ext4_size_for(tree), label="rootfs",
                      uuid=fs_uuid, compat=profile.base.fs_compat)
            pin_inode_ctimes(tmp / "root.ext4", epoch)
            make_vfat(boot_tree, tmp / "boot.vfat", label="bootfs",
                      volume_id=folder.name[:8])
            meta = {**facts, "packages": packages, "layers": list(profile.layers),
                    "base": base.key}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def _check_role_archive(inv: Inventory, host: str, base: BaseArtifact, tree: Path) -> None:
    from builder.emulate.archive import check_role_packages

    wanted = [p for name in inv.profile(host).layers
              for p in inv.layers[name].packages_for(base.suite)]
    if wanted:
        with log.step(f"check the archive for the role's packages ({base.suite}/{base.arch})"):
            check_role_packages(tree, base.suite, base.arch, wanted, apt_cache_dir())


def lock_passwords(tree: Path) -> None:
    """No account keeps a usable password (Raspbian's pi has a well-known one):
    every hash in /etc/shadow gets the '!' that ``usermod -L`` would add."""
    shadow = tree / "etc/shadow"
    if not shadow.is_file():
        return
    lines = []
    for line in shadow.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 1 and fields[1] and fields[1][0] not in "!*":
            fields[1] = "!" + fields[1]
        lines.append(":".join(fields))
    st = shadow.stat()
    shadow.write_text("\n".join(lines) + "\n")
    os.chown(shadow, st.st_uid, st.st_gid)
    os.chmod(shadow, st.st_mode & 0o7777)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return ""


# --- host --------------------------------------------------------------------


def git_revision(root: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not rev:
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def build_image(inv: Inventory, host: str, out_dir: Path,
                compression: Compression = Compression.none, strict: bool = False) -> BuildResult:
    start = time.monotonic()
    profile = inv.profile(host)
    pin_source_date_epoch(inv.root)  # every timestamp in the image; see reproducible.py
    # templates are rendered and each daemon config checked before any slow work
    check_rendered(host, render_host(inv, host))
    base = base_artifact(inv, host)
    if strict and base.skipped:
        raise BuildError(f"{host}: its base {base.name} ({base.arch}) was built without "
                         f"{', '.join(base.skipped)} (the archive's index was broken); "
                         "--strict refuses that: when the archive serves it again, delete "
                         f"{base.dir} and build again, or set cluster.mirror")
    role, cached = role_artifact(inv, host, base)
    if cached:
        log.info(f"==> role {'+'.join(profile.layers)} cached ({role.key[:12]})")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache.clean_stale(out_dir)
    try:
        sha = _host_stage(inv, host, out_dir, compression, base, role, cached)
    except NoSpaceError:
        raise NoSpaceError(f"{out_dir}: no space left on device while writing {host}.img; "
                           "free some space and build again") from None
    return BuildResult(out_dir / f"{host}.img", sha, cached, time.monotonic() - start,
                       base.skipped)


def _host_stage(inv: Inventory, host: str, out_dir: Path, compression: Compression,
                base: BaseArtifact, role: RoleArtifact, cached: bool) -> str:
    profile = inv.profile(host)
    delta, secrets, private = host_identity(inv, host, role.facts)
    disk = disk_id(inv.cluster.name, host)
    mode = image_mode(bool(secrets))
    with log.step(f"host image {host}"), tempfile.TemporaryDirectory(
            dir=out_dir, prefix=f".{host}.tmp-{os.getpid()}-") as s:
        stage = Path(s)
        image = stage / f"{host}.img"
        # The cached partition images are copied once, straight into the
        # disk, and the host's files are written into the copies there.
        assemble_disk(image, boot=role.boot, root=role.root, disk_id=disk, mode=mode,
                      boot_entries=delta.boot, root_entries=delta.root)
        sha, _ = write_checksums(image)
        if compression is not Compression.none:
            compress(image, compression, mode=mode)
        files = [{"path": e.path, "sha256": _sha(e.data), "source": "host"}
                 for e in delta.root if e.kind == "file" and e.path not in private]
        files += [{"path": f"{base.boot_mount}{e.path}", "sha256": _sha(e.data),
                   "source": "host"} for e in delta.boot]
        by_dest = {r.dest: r for r in delta.rendered}
        for f in files:
            if f["path"] in by_dest:
                f["source"] = by_dest[f["path"]].source
        manifest = {
            "host": host,
            "cluster": inv.cluster.name,
            "tool": {"name": "pibake", "version": __version__},
            "git_revision": git_revision(inv.root),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_date_epoch": source_date_epoch(inv.root),
            "base": {"name": base.name, "kind": str(profile.base.kind), "suite": base.suite,
                     "arch": base.arch, "sha256": base.source_sha256, "cache_key": base.key,
                     "suites": list(base.suites), "skipped_suites": list(base.skipped)},
            "role": {"cache_key": role.key, "cached": cached},
            "layers": [{"name": n, "content_hash": inv.layers[n].content_hash}
                       for n in profile.layers],
            "packages": role.packages,
            "files": sorted(files, key=lambda f: f["path"]),
            "image": {"file": image.name, "sha256": sha, "size": image.stat().st_size,
                      "disk_id": f"0x{disk:08x}",
                      "partuuids": {"boot": partuuid(disk, 1), "root": partuuid(disk, 2)}},
            "secrets": secrets,
            "inputs": image_inputs(inv, host),
        }
        write_manifest(stage / f"{host}.manifest.json", manifest, mode=mode)
        _publish(stage, out_dir, host)
    return sha


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _publish(stage: Path, out_dir: Path, host: str) -> None:
    """Rename the finished files into place, image last: until then the
    previous good image and its sidecars stay as they were."""
    names = sorted(p.name for p in stage.iterdir() if not p.name.startswith("."))
    image = f"{host}.img"
    for name in [n for n in names if n != image] + [image]:
        os.replace(stage / name, out_dir / name)
    for stale in (".img.zst", ".img.xz"):
        old = out_dir / f"{host}{stale}"
        if old.exists() and f"{host}{stale}" not in names:
            old.unlink()
            (out_dir / f"{host}{stale}.sha256").unlink(missing_ok=True)
