"""Rendering layer templates for one host.

Templates are jinja2 with StrictUndefined. They see the host's merged vars
(layer defaults < cluster vars < host vars) plus the whole inventory, so a
template can list every node of a group (e.g. the DHCP failover peer). Every
rendered file must carry the ``managed by pibake`` header that templates get
as ``{{ pibake_managed }}``. Then each ``generate:`` entry of the host's layers
runs its build-host tool over the rendered files (content/generate.py); its
output joins the host's rendered files.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from builder.content.generate import run_generator
from builder.content.secrets import SecretSource, accessor
from builder.errors import ConfigError
from builder.image.reproducible import source_date_epoch
from builder.inventory.config import Inventory
from builder.inventory.facts import lanmain_context
from builder.inventory.layers import Generate, Layer
from builder.inventory.rolefacts import role_view

# Formats without comments: JSON, SSH private keys, password files.
HEADER_EXEMPT_SUFFIXES = (".json", "_key", "-password")


@dataclass(frozen=True)
class Rendered:
    dest: str      # absolute path in the image
    data: bytes
    mode: int
    layer: str
    source: str    # "layers/compute/templates/etc/x.conf.j2"
    owner: str = ""  # "user:group" from the layer's owners:; "" = root
    secrets: tuple[str, ...] = ()   # the secrets it read with secret(): its data is secret
    generated: bool = False         # a generate: tool's output, not a template


def node_view(inv: Inventory, host: str) -> dict[str, Any]:
    node = inv.node(host)
    net = inv.network(host)
    profile = inv.profile(host)
    return {
        "name": node.name,
        "fqdn": f"{node.name}.{inv.cluster.domain}",
        "ip": str(node.ip),
        "mac": node.mac,
        "model": str(node.model),
        "arch": profile.base.arch_for(node.model),
        "base": profile.base.name,
        "suite": profile.base.suite,
        "network": net.name,
        "cidr": str(net.cidr),
        "prefixlen": net.cidr.prefixlen,
        "netmask": str(net.cidr.netmask),
        "gateway": str(net.gateway),
        "dns": [str(d) for d in net.dns],
        "layers": list(profile.layers),
    }


def context(inv: Inventory, host: str) -> dict[str, Any]:
    nodes = [node_view(inv, h) for h in inv.cluster.nodes]
    by_name = {n["name"]: n for n in nodes}
    ctx: dict[str, Any] = dict(inv.host_vars(host))
    ctx.update(
        host=by_name[host],
        nodes=nodes,
        groups={layer: [by_name[h] for h in hosts] for layer, hosts in inv.groups().items()},
        networks={
            n.name: {"name": n.name, "cidr": str(n.cidr), "gateway": str(n.gateway),
                     "netmask": str(n.cidr.netmask), "prefixlen": n.cidr.prefixlen,
                     "network": str(n.cidr.network_address), "dns": [str(d) for d in n.dns]}
            for n in inv.cluster.networks.values()
        },
        cluster={"name": inv.cluster.name, "domain": inv.cluster.domain,
                 "timezone": inv.cluster.timezone, "admin_user": inv.cluster.admin.user},
        roles=role_view(inv),
    )
    if "lanmain" in inv.profile(host).layers:
        ctx["lanmain"] = lanmain_context(inv, host)
    return ctx


def strict_env(folder: Path, **options: Any) -> jinja2.Environment:
    """The one template engine: an undefined name is an error, never ''."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        **options,
    )


def _env(layer: Layer) -> jinja2.Environment:
    return strict_env(layer.path / "templates")


def render_layer(inv: Inventory, host: str, layer: Layer, ctx: dict[str, Any] | None = None,
                 secrets: SecretSource | None = None) -> list[Rendered]:
    """Render the layer's templates; ``secret()`` reads ``secrets``, or stand-ins."""
    if not layer.templates:
        return []
    ctx = context(inv, host) if ctx is None else ctx
    env = _env(layer)

    def invalid(name: str, why: str) -> str:
        """For templates that check their variables: stop with one line naming
        where the value is set, e.g. {{ invalid("x_port", "is not a port; use 1-65535") }}."""
        raise ConfigError(f"{inv.var_origin(host, name)}: {ctx.get(name)!r} {why}")

    env.globals["invalid"] = invalid
    current, used = [""], list[str]()
    env.globals["secret"] = accessor(inv, layer.name, secrets, lambda: current[0], used)
    out = []
    for item in layer.templates:
        rel = item.src.relative_to(layer.path / "templates").as_posix()
        shown = f"{layer.shown}/templates/{rel}"
        current[0] = shown
        used.clear()
        managed = f"managed by pibake, layer {layer.name} ({rel}); local edits are lost on rebuild"
        try:
            text = env.get_template(rel).render({**ctx, "pibake_managed": managed})
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"{shown}:{exc.lineno}: template syntax error: {exc.message}"
                              ) from None
        except jinja2.UndefinedError as exc:
            line = _template_line(exc, item.src)
            raise ConfigError(
                f"{shown}{':' + str(line) if line else ''}: undefined variable: {exc.message}; "
                f"declare it in {layer.shown}/defaults.yaml or fix the name"
            ) from None
        except jinja2.TemplateError as exc:
            raise ConfigError(f"{shown}: template error: {exc}") from None
        if not text.strip():
            continue  # a template that renders to nothing (a branch not chosen) is not written
        if "managed by pibake" not in text and not item.dest.endswith(HEADER_EXEMPT_SUFFIXES):
            raise ConfigError(f"{shown}: rendered file has no 'managed by pibake' header; add a "
                              "comment line with {{ pibake_managed }} at the top")
        if used and item.mode & 0o004:
            raise ConfigError(f"{shown}: reads secret {used[0]!r} but would be readable by every "
                              f"user ({item.mode & 0o7777:04o}); set modes: {{{item.dest}: "
                              f"\"0600\"}} in {layer.shown}/layer.yaml")
        out.append(Rendered(item.dest, text.encode(), item.mode & 0o7777, layer.name, shown,
                            owner=item.owner, secrets=tuple(sorted(set(used)))))
    return out


def _template_line(exc: BaseException, src: Path) -> int | None:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == str(src):
            return frame.lineno
    return None


def render_host(inv: Inventory, host: str,
                secrets: SecretSource | None = None) -> list[Rendered]:
    """Every template of the host's layers, in profile order (a later layer wins);
    without ``secrets`` (check, render, the early verify) secret() gives stand-ins."""
    ctx = context(inv, host)
    result: list[Rendered] = []
    for name in inv.profile(host).layers:
        result.extend(render_layer(inv, host, inv.layers[name], ctx, secrets))
    return result + generate_host(inv, host, result)


def generate_host(inv: Inventory, host: str, rendered: list[Rendered]) -> list[Rendered]:
    """Every ``generate:`` entry of the host's layers, in profile order, run
    over what the image holds under its source (the layers' files/, then the
    rendered templates); the output as rendered files, 0644, owned by root."""
    layers = [inv.layers[name] for name in inv.profile(host).layers]
    jobs = [(layer, gen) for layer in layers for gen in layer.generate]
    if not jobs:
        return []
    epoch = source_date_epoch(inv.root)
    out: list[Rendered] = []
    for layer, gen in jobs:
        where = f"{host}: {layer.shown}/layer.yaml: generate[{gen.index}] ({gen.tool} {gen.source})"
        files, origins = _source_files(where, gen, layers, rendered)
        try:
            made = run_generator(gen.tool, files, gen.source, epoch, where)
        except ConfigError as exc:
            named = [(str(exc).find(dest), src) for dest, src in origins.items()
                     if dest in str(exc)]
            raise ConfigError(f"{exc}; fix {min(named)[1]}" if named else str(exc)) from None
        shown = f"{layer.shown}/generate: {gen.tool} {gen.source}"
        out += [Rendered(f"{gen.dest}/{rel}", data, 0o644, layer.name, shown, generated=True)
                for rel, data in made.items()]
    return out


def _source_files(where: str, gen: Generate, layers: list[Layer], rendered: list[Rendered],
                  ) -> tuple[dict[str, bytes], dict[str, str]]:
    """The files under ``gen.source`` as the image holds them (relative to it),
    and where each comes from (image path -> layer file, for messages)."""
    prefix = gen.source + "/"
    files: dict[str, bytes] = {}
    origins: dict[str, str] = {}
    for layer in layers:
        for item in layer.files:
            if item.dest.startswith(prefix) and item.src.is_file():  # a link: its target's bytes
                files[item.dest[len(prefix):]] = item.src.read_bytes()
                origins[item.dest] = f"{layer.shown}/files{item.dest}"
    for r in rendered:
        if r.dest.startswith(prefix):
            if r.secrets:
                raise ConfigError(f"{where}: {r.dest} reads secret {r.secrets[0]!r}, and the "
                                  "output is readable by every user; keep secrets out of "
                                  f"{gen.source}")
            files[r.dest[len(prefix):]] = r.data
            origins[r.dest] = r.source
    return files, origins
