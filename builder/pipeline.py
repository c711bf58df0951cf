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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import __version__, cache, log
from builder.content.hostlayer import RoleFacts, disk_id
from builder.content.identity import host_identity
from builder.emulate.pkgsecrets import removed_from_meta
from builder.errors import BuildError, NoSpaceError, PibakeError
from builder.image.assemble import assemble_disk, partuuid
from builder.image.inputs import image_inputs
from builder.image.outputs import Compression, compress, image_mode, write_checksums, write_manifest
from builder.image.reproducible import pin_source_date_epoch, source_date_epoch
from builder.inventory.bases import Base, BaseKind
from builder.plan import BASE_FILES, RECIPE_VERSION, ROLE_FILES, HostPlan
from builder.run import run


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


def base_artifact(plan: HostPlan) -> BaseArtifact:
    if plan.base.kind is BaseKind.bootstrap:
        return bootstrap_base(plan.base, str(plan.node.model), plan.arch, plan.cluster.mirror)
    return _image_base(plan.base, plan.arch)


def debian_base(model: str, mirror: str | None = None) -> BaseArtifact:
    """The built-in Debian base for a Pi model, from the cache or bootstrapped
    now: the one door through which the VM side (kernel kits) asks for a base."""
    from builder.emulate.bootstrap import PI_FAMILIES
    from builder.inventory.bases import CATALOG

    return bootstrap_base(CATALOG["debian-bookworm"], model, PI_FAMILIES[model].arch, mirror)


def _artifact(base: Base, key: str, folder: Path, arch: str,
              meta: dict[str, Any]) -> BaseArtifact:
    return BaseArtifact(base.name, key, folder, arch, base.suite, meta["boot_mount"],
                        meta["cmdline"], meta["source_sha256"],
                        tuple(meta.get("suites", [base.suite])),
                        tuple(meta.get("skipped_suites", [])))


def bootstrap_base(base: Base, model: str, arch: str, mirror: str | None) -> BaseArtifact:
    """The bootstrapped base for a Pi model, from the cache or built now."""
    from builder.emulate.bootstrap import bootstrap_rootfs, spec_for, spec_key

    spec = spec_for(model, base.suite, (), mirror)
    key = spec_key(spec)
    folder = cache.cache_dir() / "rootfs" / key

    def build() -> dict[str, Any]:
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
        return meta

    meta, _ = cache.use(folder, BASE_FILES, build)
    return _artifact(base, key, folder, arch, meta)


def _image_base(base: Base, arch: str) -> BaseArtifact:
    from builder.image.download import fetch
    from builder.image.guestfs_io import extract_image

    assert base.url is not None and base.sha256 is not None
    key = cache.key_of("image-base", RECIPE_VERSION, base.sha256)
    folder = cache.cache_dir() / "rootfs" / key

    def build() -> dict[str, Any]:
        assert base.url is not None and base.sha256 is not None
        img = fetch(base.url, base.sha256, name=base.name)
        with cache.atomic_dir(folder) as tmp:
            layout = extract_image(img, tmp / "rootfs.tar")
            meta = {"name": base.name, "arch": arch, "suite": base.suite,
                    "boot_mount": layout.boot_mount, "cmdline": layout.cmdline,
                    "source_sha256": base.sha256}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return meta

    meta, _ = cache.use(folder, BASE_FILES, build)
    return _artifact(base, key, folder, arch, meta)


# --- role --------------------------------------------------------------------


def role_artifact(plan: HostPlan, base: BaseArtifact) -> tuple[RoleArtifact, bool]:
    from builder.emulate.role import build_role

    folder = plan.role_dir
    meta, cached = cache.use(folder, ROLE_FILES, lambda: build_role(
        plan, base.tar, base.cmdline, base.boot_mount, folder, apt_cache_dir()))
    facts = RoleFacts(passwd=meta["passwd"], cmdline=meta["cmdline"],
                      dhcpcd_conf=meta["dhcpcd_conf"], group=meta.get("group", ""),
                      package_secrets=removed_from_meta(meta.get("package_secrets", [])))
    return RoleArtifact(plan.role_key, folder, facts, meta["packages"]), cached


# --- host --------------------------------------------------------------------


def git_revision(root: Path) -> str:
    try:
        rev = run(["git", "-C", root, "rev-parse", "HEAD"], capture=True, check=False,
                  timeout=10).stdout.decode().strip()
        dirty = run(["git", "-C", root, "status", "--porcelain"], capture=True, check=False,
                    timeout=10).stdout.decode().strip()
    except PibakeError:
        return "unknown"
    if not rev:
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def build_image(plan: HostPlan, out_dir: Path,
                compression: Compression = Compression.none, strict: bool = False) -> BuildResult:
    """Build one planned host: base, role, host image (plan_hosts has checked it)."""
    start = time.monotonic()
    host = plan.host
    pin_source_date_epoch(plan.project)  # every timestamp in the image; see reproducible.py
    base = base_artifact(plan)
    if strict and base.skipped:
        raise BuildError(f"{host}: its base {base.name} ({base.arch}) was built without "
                         f"{', '.join(base.skipped)} (the archive's index was broken); "
                         "--strict refuses that: when the archive serves it again, delete "
                         f"{base.dir} and build again, or set cluster.mirror")
    role, cached = role_artifact(plan, base)
    if cached:
        log.info(f"==> role {'+'.join(plan.layer_names)} cached ({role.key[:12]})")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache.clean_stale(out_dir)
    try:
        sha = _host_stage(plan, out_dir, compression, base, role, cached)
    except NoSpaceError:
        raise NoSpaceError(f"{out_dir}: no space left on device while writing {host}.img; "
                           "free some space and build again") from None
    return BuildResult(out_dir / f"{host}.img", sha, cached, time.monotonic() - start,
                       base.skipped)


def _host_stage(plan: HostPlan, out_dir: Path, compression: Compression,
                base: BaseArtifact, role: RoleArtifact, cached: bool) -> str:
    host = plan.host
    delta, secrets, private = host_identity(plan, role.facts)
    disk = disk_id(plan.cluster.name, host)
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
            "cluster": plan.cluster.name,
            "tool": {"name": "pibake", "version": __version__},
            "git_revision": git_revision(plan.project),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_date_epoch": source_date_epoch(plan.project),
            "base": {"name": base.name, "kind": str(plan.base.kind), "suite": base.suite,
                     "arch": base.arch, "sha256": base.source_sha256, "cache_key": base.key,
                     "suites": list(base.suites), "skipped_suites": list(base.skipped)},
            "role": {"cache_key": role.key, "cached": cached},
            "layers": [{"name": la.name, "content_hash": la.content_hash}
                       for la in plan.layers],
            "packages": role.packages,
            "files": sorted(files, key=lambda f: f["path"]),
            "image": {"file": image.name, "sha256": sha, "size": image.stat().st_size,
                      "disk_id": f"0x{disk:08x}",
                      "partuuids": {"boot": partuuid(disk, 1), "root": partuuid(disk, 2)}},
            "secrets": secrets,
            "inputs": image_inputs(plan.inventory, host),
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
