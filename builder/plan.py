"""plan_hosts(): the inventory and the requested hosts -> one frozen plan per host.

A HostPlan holds everything a build of that host needs to know (profile, node,
merged vars, the layer chain, the base, the cache keys, the rendered files and
the first-boot steps) and whether each cached stage would hit. Every requested
host is planned, and everything the inventory and layers can tell is checked,
before the first slow step starts: a typo in the eighth host's template fails
``build --all`` in a second with nothing built. The pipeline reads the plan and
never looks the inventory up again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from builder import cache
from builder.content.checkers import check_rendered
from builder.content.render import Rendered, render_host
from builder.errors import ConfigError
from builder.inventory.bases import Base, BaseKind
from builder.inventory.config import Cluster, Inventory, Network, Node, Profile
from builder.inventory.layers import Layer
from builder.preflight import generate_stages, require

RECIPE_VERSION = 1  # bump when a stage's recipe changes what it produces

# The code that turns a base and layers into a role's partition images: its
# text enters the role key, so a role built by older pibake code is not reused.
ROLE_CODE = tuple(Path(__file__).resolve().parent / p for p in (
    "emulate/role.py", "emulate/chroot.py", "emulate/pkgsecrets.py"))
# ... and the file-system makers of image/assemble.py (not the whole module:
# the host stage's writers there do not shape a role).
ROLE_FS_FUNCTIONS = ("ext4_size_for", "_scan", "_journal_bytes", "_inode_count", "make_ext4",
                     "make_vfat", "_fat_sectors_per_cluster")

FIRSTBOOT_DIR = Path(__file__).resolve().parents[1] / "firstboot"


def role_code_version() -> str:
    import inspect

    from builder.image import assemble

    h = hashlib.sha256()
    for path in ROLE_CODE:
        h.update(path.read_bytes())
    for name in ROLE_FS_FUNCTIONS:
        h.update(inspect.getsource(getattr(assemble, name)).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Step:
    """One first-boot step: the script and where it comes from (for messages)."""

    name: str          # "40-flaky.sh"
    src: Path
    origin: str        # "firstboot/steps" or "layers/web/firstboot.d"


@dataclass(frozen=True)
class HostPlan:
    host: str
    project: Path
    inventory: Inventory             # only for the host stage's secrets (the store, secret())
    cluster: Cluster
    profile: Profile
    node: Node
    network: Network
    vars: Mapping[str, Any]          # layer defaults < cluster vars < host vars
    layers: tuple[Layer, ...]        # in profile order
    base: Base
    arch: str
    base_key: str
    role_key: str
    hook_envs: Mapping[str, Mapping[str, str]]   # layer name -> its hooks' environment
    rendered: tuple[Rendered, ...]
    steps: tuple[Step, ...]
    base_cached: bool
    role_cached: bool
    daemon_checks: int = 0           # rendered configs that passed their daemon's checker

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def base_dir(self) -> Path:
        return cache.cache_dir() / "rootfs" / self.base_key

    @property
    def role_dir(self) -> Path:
        return cache.cache_dir() / "roles" / self.role_key


# What a complete cache entry holds besides meta.json, per kind.
BASE_FILES = ("rootfs.tar",)
ROLE_FILES = ("root.ext4", "boot.vfat")


def plan_hosts(inv: Inventory, hosts: tuple[str, ...] | list[str]) -> tuple[HostPlan, ...]:
    """Plan and validate every host; the first mistake raises a ConfigError."""
    for host in hosts:
        inv.profile(host)  # every name first: a typo in the last one fails at once
    # Rendering runs the layers' generate: tools: a missing one is one line, now.
    require(generate_stages(inv.layers[name] for host in hosts
                            for name in inv.profile(host).layers))
    return tuple(plan_host(inv, host) for host in hosts)


def plan_host(inv: Inventory, host: str) -> HostPlan:
    profile = inv.profile(host)
    node = inv.node(host)
    base = profile.base
    arch = base.arch_for(node.model)
    layers = tuple(inv.layers[name] for name in profile.layers)
    vars = inv.host_vars(host)
    _check_admin(inv, profile, layers)
    bkey = base_key(base, str(node.model), inv.cluster.mirror)
    envs = {layer.name: MappingProxyType(hook_env(inv.cluster, base.suite, arch, layer, vars))
            for layer in layers}
    plan = HostPlan(
        host=host, project=inv.root, inventory=inv, cluster=inv.cluster, profile=profile, node=node,
        network=inv.network(host), vars=MappingProxyType(vars), layers=layers, base=base,
        arch=arch, base_key=bkey, role_key=role_key(bkey, base, layers, envs),
        hook_envs=MappingProxyType(envs), rendered=tuple(render_host(inv, host)),
        steps=firstboot_steps(layers), base_cached=False, role_cached=False,
    )
    _check_host_layer(plan)
    checks = check_rendered(host, plan.rendered)  # each daemon's own checker on its config
    return _with_cache_state(replace(plan, daemon_checks=checks))


def _with_cache_state(plan: HostPlan) -> HostPlan:
    return replace(plan, base_cached=cache.entry(plan.base_dir, BASE_FILES) is not None,
                   role_cached=cache.entry(plan.role_dir, ROLE_FILES) is not None)


def _check_admin(inv: Inventory, profile: Profile, layers: tuple[Layer, ...]) -> None:
    """A bootstrapped base has no accounts: some selected layer must create the
    admin. (A downloaded image may bring its own; the host stage checks that.)"""
    if profile.base.kind is not BaseKind.bootstrap or any(la.creates_admin for la in layers):
        return
    creators = [la.name for la in inv.layers.values() if la.creates_admin]
    hint = f"add layer '{creators[0]}'" if creators else \
        "set creates_admin: true in the layer.yaml of the layer whose hook creates it"
    raise ConfigError(f"{profile.shown}: layers: no selected layer creates the admin account "
                      f"'{inv.cluster.admin.user}' ({profile.base.name} has none); {hint}")


def _check_host_layer(plan: HostPlan) -> None:
    """Write the host layer with stand-in role facts, so anything it would
    refuse is found now, not after the role build."""
    from builder.content.hostlayer import host_delta, standin_facts

    host_delta(plan, standin_facts(plan))


def base_key(base: Base, model: str, mirror: str | None) -> str:
    if base.kind is BaseKind.bootstrap:
        from builder.emulate.bootstrap import spec_for, spec_key

        return spec_key(spec_for(model, base.suite, (), mirror))
    return cache.key_of("image-base", RECIPE_VERSION, base.sha256)


def hook_env(cluster: Cluster, suite: str, arch: str, layer: Layer,
             vars: Mapping[str, Any]) -> dict[str, str]:
    """What a hooks.d script sees: the build's facts and exactly the variables
    its layer declares under ``hook_vars:`` (upper-case). Variables that only
    templates use never reach a hook, so they never split the role cache."""
    env = {
        "PIBAKE_LAYER": layer.name,
        "PIBAKE_SUITE": suite,
        "PIBAKE_ARCH": arch,
        "PIBAKE_ADMIN_USER": cluster.admin.user,
        "PIBAKE_TIMEZONE": cluster.timezone,
        "PIBAKE_DOMAIN": cluster.domain,
    }
    for key in layer.hook_vars:
        env[key.upper()] = _env_value(vars.get(key))
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def role_key(bkey: str, base: Base, layers: tuple[Layer, ...],
             envs: Mapping[str, Mapping[str, str]]) -> str:
    """Everything that shapes the role image: the base, the role-building code,
    and per layer its files/, packages for the suite, hooks, layer.yaml and the
    hooks' environment. Templates and defaults.yaml are not in it."""
    parts = [[la.name, la.build_hash, dict(envs[la.name]), list(la.packages_for(base.suite))]
             for la in layers]
    return cache.key_of("role", RECIPE_VERSION, role_code_version(), bkey, base.boot_mount,
                        base.fs_compat, parts)


def firstboot_steps(layers: tuple[Layer, ...]) -> tuple[Step, ...]:
    """pibake's own steps plus every layer's, by name; a clash is an error."""
    steps: dict[str, Step] = {}
    for src in sorted((FIRSTBOOT_DIR / "steps").glob("*.sh")):
        steps[src.name] = Step(src.name, src, "firstboot/steps")
    for layer in layers:
        for src in layer.firstboot:
            if src.name in steps:
                raise ConfigError(
                    f"{layer.shown}/firstboot.d/{src.name}: a step with this name already comes "
                    f"from {steps[src.name].origin}; rename it (step names are unique per image)")
            steps[src.name] = Step(src.name, src, f"{layer.shown}/firstboot.d")
    return tuple(steps[name] for name in sorted(steps))


def image_size(plan: HostPlan) -> int | None:
    """The disk image's size in bytes when the role is cached, else None."""
    from builder.image.assemble import disk_layout

    boot, root = (plan.role_dir / f for f in ROLE_FILES[::-1])
    if not plan.role_cached:
        return None
    return disk_layout(boot.stat().st_size, root.stat().st_size).size


def describe(plan: HostPlan) -> list[str]:
    """What a build of this plan would do, for ``pibake plan`` and ``build --dry-run``."""
    from builder.content.hostlayer import host_delta, standin_facts

    def state(hit: bool) -> str:
        return "cached" if hit else "build"

    lines = [f"{plan.host}: {plan.base.name} on a {plan.node.model} ({plan.arch}), "
             f"layers {'+'.join(plan.layer_names)}",
             f"  base  {plan.base_key[:16]}  {state(plan.base_cached)}"]
    lines.append(f"  role  {plan.role_key[:16]}  {state(plan.role_cached)}")
    if not plan.role_cached:
        for layer in plan.layers:
            pkgs = " ".join(layer.packages_for(plan.base.suite)) or "-"
            hooks = " ".join(h.name for h in layer.hooks) or "-"
            lines.append(f"    layer {layer.name}: packages: {pkgs}; hooks: {hooks}")
    delta = host_delta(plan, standin_facts(plan))
    lines.append(f"  host files ({len(delta.root) + len(delta.boot)}):")
    boot = plan.base.boot_mount.rstrip("/")
    for prefix, entries in (("", delta.root), (boot, delta.boot)):
        for e in entries:
            lines.append(f"    {e.kind:7} {e.mode:04o} {e.uid}:{e.gid}  {prefix}{e.path}")
    size = image_size(plan)
    lines.append(f"  image {size / (1 << 20):.0f} MiB" if size is not None
                 else "  image size known after the role build")
    return lines
