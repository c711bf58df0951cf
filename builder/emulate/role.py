"""The role stage: a base root file system plus the plan's layers (files,
packages, hooks) run in an emulated ARM chroot, made into partition images.

This file's text enters every role's cache key (plan.ROLE_CODE): change what it
does and every role is rebuilt, never reused from older code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import cache, log
from builder.emulate.pkgsecrets import strip_package_secrets
from builder.errors import BuildError
from builder.image.assemble import ext4_size_for, make_ext4, make_vfat
from builder.image.reproducible import normalize_tree, pin_inode_ctimes, source_date_epoch
from builder.inventory.bases import BaseKind
from builder.inventory.layers import Layer, resolve_owner
from builder.run import run, which

if TYPE_CHECKING:
    from builder.plan import HostPlan


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


def apply_owners(layer: Layer, tree: Path) -> None:
    """The layer's owners: for its files/, after its packages and hooks have
    created the accounts they name."""
    owned = [item for item in layer.files if item.owner]
    if not owned:
        return
    passwd, group = _read_text(tree / "etc/passwd"), _read_text(tree / "etc/group")
    for item in owned:
        ids = resolve_owner(item.owner, passwd, group)
        if ids is None:
            raise BuildError(f"{layer.shown}/layer.yaml: owners.{item.dest}: {item.owner!r} is "
                             "not an account of the image; create it in a hook or install the "
                             "package that does")
        os.lchown(tree / item.dest.lstrip("/"), *ids)


def check_role_archive(plan: HostPlan, tree: Path, apt_cache: Path) -> None:
    """Every package the layers ask for is in the base's archive, before the
    first slow install (a name that changed between suites fails in one line)."""
    from builder.emulate.archive import check_role_packages

    suite, arch = plan.base.suite, plan.arch
    wanted = [p for layer in plan.layers for p in layer.packages_for(suite)]
    if wanted:
        with log.step(f"check the archive for the role's packages ({suite}/{arch})"):
            check_role_packages(tree, suite, arch, wanted, apt_cache)


def build_role(plan: HostPlan, base_tar: Path, base_cmdline: str, boot_mount: str,
               folder: Path, apt_cache: Path) -> dict[str, Any]:
    """Build the role into ``folder`` (atomically) and return its meta.json."""
    from builder.emulate.chroot import EmulatedChroot, dpkg_versions, preflight_emulation

    preflight_emulation(plan.arch)
    work_root = cache.cache_dir() / "work"
    work_root.mkdir(exist_ok=True)
    cache.clean_stale(work_root)
    with tempfile.TemporaryDirectory(dir=work_root, prefix=f".role.tmp-{os.getpid()}-") as w:
        work = Path(w)
        tree = work / "root"
        tree.mkdir()
        with log.step("unpack base"):
            run([which("tar", "tar"), "-x", "-p", "--numeric-owner", "--xattrs",
                 "--xattrs-include=*", "-f", base_tar, "-C", tree], what="tar")
        if plan.base.kind is BaseKind.bootstrap:
            check_role_archive(plan, tree, apt_cache)
        with EmulatedChroot(tree, plan.arch, apt_cache) as chroot:
            for layer in plan.layers:
                with log.step(f"layer {layer.name}"):
                    copy_layer_files(layer, tree)
                    wanted = list(layer.packages_for(plan.base.suite))
                    if wanted:
                        chroot.apt_install(wanted)
                    for hook in layer.hooks:
                        chroot.run_hook(hook, dict(plan.hook_envs[layer.name]))
                    apply_owners(layer, tree)
        lock_passwords(tree)
        removed = strip_package_secrets(tree)
        if removed:
            log.info("    package-generated secrets kept out of the role (each host gets "
                     "its own): " + ", ".join(r.name for r in removed))
        packages = dpkg_versions(tree)
        facts = {
            "passwd": _read_text(tree / "etc/passwd"),
            "cmdline": base_cmdline,
            "dhcpcd_conf": _read_text(tree / "etc/dhcpcd.conf"),
            "group": _read_text(tree / "etc/group"),
        }
        boot_src = tree / boot_mount.lstrip("/")
        boot_tree = work / "boot"
        if boot_src.is_dir():
            os.replace(boot_src, boot_tree)
        else:
            boot_tree.mkdir()
        boot_src.mkdir(mode=0o755, parents=True, exist_ok=True)
        with log.step("partition images"), cache.atomic_dir(folder) as tmp:
            epoch = source_date_epoch(plan.project)
            normalize_tree(tree, epoch)
            normalize_tree(boot_tree, epoch)
            fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pibake-role:{folder.name}"))
            make_ext4(tree, tmp / "root.ext4", size=ext4_size_for(tree), label="rootfs",
                      uuid=fs_uuid, compat=plan.base.fs_compat)
            pin_inode_ctimes(tmp / "root.ext4", epoch)
            make_vfat(boot_tree, tmp / "boot.vfat", label="bootfs",
                      volume_id=folder.name[:8])
            meta = {**facts, "packages": packages, "layers": list(plan.layer_names),
                    "base": plan.base_key,
                    "package_secrets": [r.as_json() for r in removed]}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


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
