"""What the build host needs, checked once before any slow step.

One table of the host tools each build stage runs: a missing ``bmaptool`` is
reported with the rest before the role build, not after it, and the message
names the Debian packages to install. Then the ARM emulation, once per
architecture. The tools of layers' ``generate:`` entries run whenever a host's
templates are rendered, so ``plan_hosts`` checks those first of all, and only
for hosts whose layers use them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from builder.content.generate import GENERATORS
from builder.errors import PreflightError
from builder.inventory.bases import BaseKind
from builder.run import find

if TYPE_CHECKING:
    from builder.inventory.layers import Layer
    from builder.plan import HostPlan


class Tool(NamedTuple):
    name: str
    package: str


# stage -> the programs it runs on the build host (ARM programs run in the chroot).
STAGE_TOOLS: dict[str, tuple[Tool, ...]] = {
    "bootstrap base": (Tool("mmdebstrap", "mmdebstrap"), Tool("apt-get", "apt"),
                       Tool("tar", "tar"), Tool("mmtarfilter", "mmdebstrap"),
                       Tool("depmod", "kmod"), Tool("systemd-hwdb", "udev")),
    "role": (Tool("tar", "tar"), Tool("unshare", "util-linux"), Tool("mke2fs", "e2fsprogs"),
             Tool("mkfs.vfat", "dosfstools"), Tool("mcopy", "mtools"), Tool("mmd", "mtools")),
    "host": (Tool("debugfs", "e2fsprogs"), Tool("mcopy", "mtools"), Tool("mdir", "mtools"),
             Tool("mmd", "mtools"), Tool("sfdisk", "fdisk"), Tool("bmaptool", "bmap-tools")),
    "compress zstd": (Tool("zstd", "zstd"),),
    "compress xz": (Tool("xz", "xz-utils"),),
    # layer.yaml generate: tools, run as a host's templates are rendered
    **{f"generate {name}": (Tool(g.program, g.package),) for name, g in GENERATORS.items()},
}


def found(tool: str) -> str | None:
    return find(tool)


def stages_for(base_kinds: Iterable[BaseKind], role: bool, compression: str,
               generate: Iterable[str] = ()) -> list[str]:
    """The stages a build runs: the bootstrap when a bootstrapped base must be
    built, the role when a role must be built, the generate stages its layers
    name, the host always."""
    stages = ["bootstrap base"] if BaseKind.bootstrap in set(base_kinds) else []
    stages += ["role"] if role else []
    stages += list(generate) + ["host"]
    return stages + ([f"compress {compression}"] if compression != "none" else [])


def generate_stages(layers: Iterable[Layer]) -> list[str]:
    """``generate <tool>`` for every tool the layers' generate: entries name."""
    return [f"generate {tool}" for tool in sorted({g.tool for la in layers for g in la.generate})]


def table(stages: Iterable[str]) -> list[tuple[str, Tool, str | None]]:
    """(stage, tool, path or None) for every tool of ``stages``."""
    return [(stage, tool, found(tool.name)) for stage in stages for tool in STAGE_TOOLS[stage]]


def require(stages: Iterable[str]) -> None:
    """One PreflightError naming every missing tool and the packages to install."""
    missing = [(stage, tool) for stage, tool, path in table(stages) if path is None]
    if not missing:
        return
    names = ", ".join(dict.fromkeys(f"{tool.name} ({stage})" for stage, tool in missing))
    packages = " ".join(sorted({tool.package for _, tool in missing}))
    raise PreflightError(f"host tools not found: {names}; install them: apt-get install "
                         f"{packages}")


def host_preflight(plans: Iterable[HostPlan], compression: str = "none",
                   everything: bool = False) -> list[str]:
    """Check the tools and the emulation the plans' builds need (``everything``:
    as if nothing were cached, for ``pibake check``); return the tool table."""
    from builder.emulate.chroot import preflight_emulation

    plans = list(plans)
    cold = [p for p in plans if everything or not p.role_cached]
    kinds = [p.base.kind for p in cold if everything or not p.base_cached]
    stages = stages_for(kinds, bool(cold), compression,
                        generate_stages(la for p in plans for la in p.layers))
    rows = table(stages)
    require(stages)
    lines = [f"{stage:15} {tool.name:11} {tool.package:12} {path}" for stage, tool, path in rows]
    for arch in sorted({p.arch for p in cold}):
        preflight_emulation(arch)
        lines.append(f"{'emulation':15} {arch:11} {'qemu-user-static':12} binfmt_misc ok")
    return lines
