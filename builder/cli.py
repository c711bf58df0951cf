"""The `pibake` command: a thin layer over the library.

The only place that turns exceptions into output and exit codes: a
PibakeError becomes one line on stderr and its exit code; Ctrl-C stops every
child process and exits 130.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from builder import __version__, log
from builder.errors import BootError, PibakeError


def _project(ctx: click.Context) -> Path:
    root: Path = ctx.obj["project"]
    return root


def _inventory(ctx: click.Context):  # type: ignore[no-untyped-def]
    from builder.inventory.config import load_inventory

    return load_inventory(_project(ctx))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pibake")
@click.option("--project", "-C", type=click.Path(file_okay=False, path_type=Path), default=".",
              show_default=True, help="Project folder holding profiles/ and layers/.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors and notices.")
@click.pass_context
def cli(ctx: click.Context, project: Path, quiet: bool) -> None:
    """Bake per-host Raspberry Pi SD card images from one cluster inventory."""
    ctx.ensure_object(dict)
    ctx.obj["project"] = project
    log.set_quiet(quiet)


@cli.command()
@click.option("--inventory-only", is_flag=True,
              help="Only plan the hosts (the daemons' checkers and generators still run); skip "
                   "the table of host tools and the emulation check.")
@click.pass_context
def check(ctx: click.Context, inventory_only: bool) -> None:
    """Plan every host as a build would (templates, each daemon's checker on its
    config, host files, first-boot steps, accounts), without touching an image."""
    from builder.plan import plan_hosts

    inv = _inventory(ctx)
    plans = plan_hosts(inv, tuple(inv.profiles))
    if not inventory_only:
        from builder.preflight import host_preflight

        for line in host_preflight(plans, everything=True):
            click.echo(line)
    count = sum(not r.generated for p in plans for r in p.rendered)
    made = sum(r.generated for p in plans for r in p.rendered)
    generated = f"{made} file{'s' * (made != 1)} generated, " if made else ""
    checked = sum(p.daemon_checks for p in plans)
    click.echo(f"ok: {len(inv.profiles)} hosts, {len(inv.layers)} layers, "
               f"{count} templates rendered, {generated}{checked} configs passed their "
               "daemon's checker")


def _plans(ctx: click.Context, hosts: tuple[str, ...], all_hosts: bool, verb: str):  # type: ignore[no-untyped-def]
    from builder.errors import ConfigError
    from builder.plan import plan_hosts

    inv = _inventory(ctx)
    if all_hosts:
        hosts = tuple(inv.profiles)
    if not hosts:
        raise ConfigError(f"pibake {verb}: name a host (e.g. pibake {verb} compute-01) or --all")
    return plan_hosts(inv, hosts)  # every host is checked before the first build starts


@cli.command("plan")
@click.argument("hosts", nargs=-1)
@click.option("--all", "all_hosts", is_flag=True, help="Plan every host in the inventory.")
@click.pass_context
def plan_cmd(ctx: click.Context, hosts: tuple[str, ...], all_hosts: bool) -> None:
    """Show what building HOST would do: cache keys, hit or miss, layers'
    packages and hooks, the host's files, the image size."""
    from builder.plan import describe

    for plan in _plans(ctx, hosts, all_hosts, "plan"):
        for line in describe(plan):
            click.echo(line)


@cli.command()
@click.argument("host")
@click.option("--to", "dest", required=True, type=click.Path(path_type=Path),
              help="Folder to write the host's files into (created; must be empty).")
@click.pass_context
def render(ctx: click.Context, host: str, dest: Path) -> None:
    """Write every file HOST's layers and host layer put into the image, for review."""
    from builder.content.review import render_to

    inv = _inventory(ctx)
    written = render_to(inv, host, dest)
    click.echo(f"{host}: {written} files written to {dest}")


@cli.command()
@click.argument("hosts", nargs=-1)
@click.option("--all", "all_hosts", is_flag=True, help="Build every host in the inventory.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Output folder (default: <project>/output).")
@click.option("--compress", "compression", type=click.Choice(["none", "zstd", "xz"]),
              default="none", show_default=True, help="Also write a compressed copy.")
@click.option("--dry-run", is_flag=True, help="Print the plan (as pibake plan) and stop.")
@click.option("--catalog/--no-catalog", default=None,
              help="Write output/os_list.json for Raspberry Pi Imager (default: with 2+ hosts).")
@click.option("--strict", is_flag=True,
              help="Fail instead of building without a -security/-updates suite whose index "
                   "the archive serves broken (for CI and release builds).")
@click.pass_context
def build(ctx: click.Context, hosts: tuple[str, ...], all_hosts: bool, output: Path | None,
          compression: str, dry_run: bool, catalog: bool | None, strict: bool) -> None:
    """Build output/HOST.img (+ .sha256, .bmap, .manifest.json) for each HOST."""
    from builder.image.outputs import Compression
    from builder.inventory.bases import support_notices
    from builder.pipeline import build_image
    from builder.preflight import host_preflight

    plans = _plans(ctx, hosts, all_hosts, "build")
    if dry_run:
        ctx.invoke(plan_cmd, hosts=tuple(p.host for p in plans))
        return
    host_preflight(plans, compression=compression)
    out = output or _project(ctx) / "output"
    for line in support_notices(plans[0].inventory, tuple(p.host for p in plans)):
        log.notice(line)
    skipped: dict[str, tuple[str, ...]] = {}
    for plan in plans:
        result = build_image(plan, out, Compression(compression), strict)
        click.echo(f"{result.image}  sha256 {result.sha256[:16]}…  "
                   f"{result.seconds:.1f}s{' (role cached)' if result.role_cached else ''}")
        if result.skipped_suites:
            skipped[plan.host] = result.skipped_suites
    if catalog or (catalog is None and len(plans) > 1):
        from builder.image.catalog import write_catalog

        click.echo(f"{write_catalog(plans[0].inventory, out)}  "
                   "(Raspberry Pi Imager: rpi-imager --repo URL)")
    if skipped:
        log.notice("warning: built without " + "; ".join(
            f"{h} ({', '.join(s)})" for h, s in skipped.items()) + ": the archive's index was "
            "broken; see the manifests, and use --strict to make this an error")


@cli.command()
@click.argument("hosts", nargs=-1, required=True)
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Image to boot (default: <project>/output/HOST.img).")
@click.option("--machine", type=click.Choice(["virt", "raspi3b"]), default="virt",
              show_default=True, help="virt: generic ARM board, fast; raspi3b: Pi 3 model.")
@click.option("--timeout", type=float, default=600, show_default=True,
              help="Seconds to wait for the first-boot runner's 'done'.")
@click.option("--keep", is_flag=True, help="Leave the VM running and print an ssh command.")
@click.option("--ssh-port", type=int, default=None, help="Local port forwarded to the VM's 22.")
@click.option("--lan", "lan_port", type=click.IntRange(1024, 65535), default=None,
              help="Put the node's NIC on a virtual LAN shared by every VM started with the "
                   "same PORT (multicast on 127.0.0.1); virt only.")
@click.pass_context
def boot(ctx: click.Context, hosts: tuple[str, ...], image: Path | None, machine: str,
         timeout: float, keep: bool, ssh_port: int | None, lan_port: int | None) -> None:
    """Boot HOST's image under QEMU (copy-on-write; the image is never changed)
    and wait until its first-boot steps report done. Several HOSTs boot together
    on one virtual LAN and are stopped once every one of them is done."""
    from builder.vm.boot import boot_image
    from builder.vm.qemu import LanSpec, Machine

    inv = _inventory(ctx)
    nodes = {host: inv.node(inv.profile(host).host) for host in hosts}
    if lan_port and machine != "virt":
        raise BootError(f"--lan {lan_port}: the raspi3b model has one USB NIC on QEMU's user "
                        "network; use --machine virt to join a LAN")
    if len(hosts) > 1:
        _boot_group(ctx, hosts, {h: n.mac for h, n in nodes.items()}, machine=machine,
                    timeout=timeout, keep=keep, image=image, ssh_port=ssh_port,
                    lan_port=lan_port)
        return
    host = hosts[0]
    result = boot_image(
        image or _project(ctx) / "output" / f"{host}.img", host=host, machine=Machine(machine),
        timeout=timeout, keep=keep, ssh_port=ssh_port,
        lan=LanSpec(lan_port) if lan_port else None, mac=nodes[host].mac,
        ssh_user=inv.cluster.admin.user, known_hosts=_known_hosts(inv))
    peak = f", qemu peak memory {result.peak_memory_mib:.0f} MiB" if result.peak_memory_mib else ""
    click.echo(f"{host}: first boot done in {result.seconds:.1f}s{peak}")
    if keep and result.ssh_command:
        click.echo(f"{host}: running (pid {result.pid}); ssh: {result.ssh_command}")


def _known_hosts(inv):  # type: ignore[no-untyped-def]
    """The store's @cert-authority line, for a kept VM's ssh command (None without a store)."""
    from builder.content.secrets import Store

    path = Store.at(inv).path / "known_hosts"
    return path if path.is_file() else None


def _boot_group(ctx: click.Context, hosts: tuple[str, ...], macs: dict[str, str | None], *,
                machine: str, timeout: float, keep: bool, image: Path | None,
                ssh_port: int | None, lan_port: int | None) -> None:
    from builder.vm.boot import NodeBoot, boot_group
    from builder.vm.qemu import LanSpec, free_udp_port

    for flag, used in (("--keep", keep), ("--image", image), ("--ssh-port", ssh_port),
                       ("--machine raspi3b", machine != "virt")):
        if used:
            raise BootError(f"{flag}: works with one host; boot {', '.join(hosts)} one by one "
                            "or drop the option")
    lan = LanSpec(lan_port or free_udp_port())
    group = [NodeBoot(h, _project(ctx) / "output" / f"{h}.img", macs[h]) for h in hosts]
    with boot_group(group, lan=lan, timeout=timeout) as vms:
        for host in hosts:
            res = vms[host].result
            peak = f", qemu peak memory {res.peak_memory_mib:.0f} MiB" \
                if res.peak_memory_mib else ""
            click.echo(f"{host}: first boot done in {res.seconds:.1f}s{peak}")


@cli.group("cache", invoke_without_command=True)
@click.pass_context
def cache_cmd(ctx: click.Context) -> None:
    """List the build cache's entries (kind, key, size, last use)."""
    if ctx.invoked_subcommand is not None:
        return
    import time

    from builder import cache

    listed = cache.entries()
    for e in listed:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_use))
        click.echo(f"{e.kind:8} {e.key[:16]}  {e.size / (1 << 20):8.1f} MiB  {used}")
    total = sum(e.size for e in listed)
    click.echo(f"{len(listed)} entries, {total / (1 << 20):.1f} MiB in {cache.cache_dir()}")


@cache_cmd.command("prune")
@click.pass_context
def cache_prune(ctx: click.Context) -> None:
    """Remove the bases, roles and downloads no host of the inventory uses."""
    from builder import cache
    from builder.plan import plan_hosts

    inv = _inventory(ctx)
    keep: set[str] = set()
    for plan in plan_hosts(inv, tuple(inv.profiles)):
        keep |= {plan.base_key, plan.role_key, plan.base.sha256 or ""}
    removed = cache.prune(keep)
    for e in removed:
        click.echo(f"removed {e.kind:8} {e.key[:16]}  {e.size / (1 << 20):8.1f} MiB")
    click.echo(f"{len(removed)} entries removed, "
               f"{sum(e.size for e in removed) / (1 << 20):.1f} MiB freed")


@cli.command("cluster-test")
@click.argument("scenario")
@click.option("--identity", "-i", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Private key of the cluster's admin account (default: a "
                                 "throwaway key certified by the cluster's user CA).")
@click.option("--rebuild", "rebuild", multiple=True,
              help="Node to stop and boot again from a fresh overlay (repeatable; default: "
                   "the scenario's last node).")
@click.option("--no-rebuild", is_flag=True, help="Only boot and check the joins.")
@click.option("--timeout", type=float, default=900, show_default=True,
              help="Seconds each phase may take to pass every check.")
@click.pass_context
def cluster_test(ctx: click.Context, scenario: str, identity: Path | None, rebuild: tuple[str, ...],
                 no_rebuild: bool, timeout: float) -> None:
    """Boot SCENARIO's nodes together under QEMU (a layer's nodes, or full) and
    check from inside each VM that it joined its peers; then rebuild a node and
    check that it comes back as itself and rejoins."""
    from builder.vm.cluster import pick, run_scenario, summary

    inv = _inventory(ctx)
    chosen = pick(inv, scenario, () if no_rebuild else (rebuild or None))
    report = run_scenario(inv, _project(ctx), chosen, identity=identity,
                          check_timeout=timeout, echo=click.echo)
    for line in summary(report):
        click.echo(line)


@cli.group()
def secrets() -> None:
    """The cluster's secrets store (outside git: $PIBAKE_SECRETS, cluster.secrets_dir
    or secrets/ beside profiles/)."""


@secrets.command("init")
@click.pass_context
def secrets_init(ctx: click.Context) -> None:
    """Create every missing key, certificate and secret; never replace one."""
    from builder.content.secrets import Store

    store = Store.at(_inventory(ctx))
    created = store.init()
    click.echo(f"{store.shown}: {len(created)} created, "
               f"{len(store.items()) - len(created)} already there")


@secrets.command("list")
@click.pass_context
def secrets_list(ctx: click.Context) -> None:
    """Names, kinds, creation dates and holders; never a value."""
    from builder.content.secrets import Store

    store = Store.at(_inventory(ctx))
    store.check()
    for name, kind, created, holders in store.listing():
        click.echo(f"{name:36} {kind:13} {created:16}  {holders}")


@secrets.command("rotate")
@click.argument("name")
@click.pass_context
def secrets_rotate(ctx: click.Context, name: str) -> None:
    """Replace NAME on purpose (and re-sign what depends on it)."""
    from builder.content.secrets import Store

    store = Store.at(_inventory(ctx))
    renewed, rebuild = store.rotate(name)
    click.echo(f"{store.shown}: renewed {', '.join(renewed)}; rebuild: "
               f"pibake build {' '.join(rebuild)}")


@secrets.command("sign-user")
@click.argument("pubkey", type=click.Path(path_type=Path))
@click.option("--principal", default=None,
              help="Account the certificate logs in as (default: cluster.admin.user).")
@click.option("--validity", default="52w", show_default=True,
              help="How long it is valid: 52w, 30d, 12h, or forever.")
@click.pass_context
def secrets_sign_user(ctx: click.Context, pubkey: Path, principal: str | None,
                      validity: str) -> None:
    """Certify PUBKEY (your ~/.ssh/id_*.pub) with the cluster's user CA: every node
    then accepts that key for the admin account, with no authorized_keys line."""
    from builder.content.secrets import Store

    inv = _inventory(ctx)
    user = principal or inv.cluster.admin.user
    cert, valid = Store.at(inv).sign_user(pubkey, user, validity)
    click.echo(f"{cert}: logs in as {user} on every node of {inv.cluster.name}; {valid}")


@cli.command("ssh-config")
@click.pass_context
def ssh_config(ctx: click.Context) -> None:
    """Print the known_hosts line and a ~/.ssh/config block that verify every node
    strictly against the cluster's host CA."""
    from builder.content.secrets import Store

    inv = _inventory(ctx)
    store = Store.at(inv)
    store.check()
    known = store.read("known_hosts").strip()
    click.echo(f"# ~/.ssh/known_hosts (the one line for the whole cluster):\n{known}\n")
    click.echo("# ~/.ssh/config:")
    for node in inv.cluster.nodes.values():
        click.echo(f"Host {node.name} {node.name}.{inv.cluster.domain}\n"
                   f"    HostName {node.ip}\n    User {inv.cluster.admin.user}\n"
                   f"    HostKeyAlias {node.name}\n    StrictHostKeyChecking yes\n")


@cli.command()
@click.argument("host")
@click.argument("device", type=click.Path(path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for the host name to be typed back.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding HOST.img (default: <project>/output).")
@click.option("--max-size", default="256G", show_default=True,
              help="Refuse a device larger than this (an SD card is smaller).")
@click.option("--allow-fixed", is_flag=True,
              help="Allow a disk that is neither removable nor hot-plugged.")
@click.option("--stale-ok", is_flag=True,
              help="Flash an image built before its inventory or layers changed.")
@click.option("--allow-file", is_flag=True, help="DEVICE may be a plain file (for tests).")
@click.pass_context
def flash(ctx: click.Context, host: str, device: Path, yes: bool, output: Path | None,
          max_size: str, allow_fixed: bool, stale_ok: bool, allow_file: bool) -> None:
    """Write output/HOST.img to DEVICE (an SD card), read it back and compare."""
    from builder.errors import FlashError
    from builder.image import flash as flashing

    plan = flashing.plan_for_host(
        _inventory(ctx), host, device, output or _project(ctx) / "output", stale_ok=stale_ok,
        allow_file=allow_file, max_size=flashing.parse_size(max_size), allow_fixed=allow_fixed)
    if not yes:
        for line in plan.describe():
            click.echo(line, err=True)
        try:
            typed = click.prompt(f"type the host name ({host}) to write it", default="",
                                 show_default=False, err=True)
        except click.exceptions.Abort:
            click.echo(err=True)  # end the prompt's line
            raise FlashError(f"{device}: no host name typed; nothing was written (--yes skips "
                             "the question)") from None
        if typed.strip() != host:
            raise FlashError(f"{device}: typed {typed.strip()!r}, not {host!r}; nothing was "
                             "written")
    result = flashing.write_plan(plan)
    click.echo(f"{result.device}: {result.host} written and verified, sha256 {result.sha256}, "
               f"{result.data_bytes / 2**20:.0f} MiB in {result.seconds:.1f}s ({result.tool})")


@cli.command()
@click.pass_context
def bases(ctx: click.Context) -> None:
    """List the bases profiles can start from, with their security support per arch."""
    from builder.inventory.bases import support_summary

    inv = _inventory(ctx)
    for base in inv.cluster.bases.values():
        default = " (cluster.base)" if base.name == inv.cluster.base else ""
        click.echo(f"{base.name:32} {base.kind:9} {base.suite:9} {base.description}{default}")
        click.echo(f"{'':32} security: {support_summary(base)}")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # same clean-up as Ctrl-C: children killed, temporaries removed


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(standalone_mode=False)
    except PibakeError as exc:
        from builder.run import kill_all

        kill_all()
        click.echo(f"pibake: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        from builder.run import kill_all

        kill_all()
        click.echo("pibake: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        from builder.run import kill_all

        kill_all()
        click.echo("pibake: interrupted; nothing half-written was kept", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
