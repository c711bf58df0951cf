"""`make bench`: build and boot speed, measured in one run.

Build: the same host built cold and warm, as a ratio. Cold: an empty pibake
cache (base bootstrap, role layers in the emulated chroot, host image).
Downloaded .deb files are kept in a shared apt cache so the archive's speed
does not drown the measurement; pass --no-deb-cache to drop that too. Warm:
the role is cached and one host variable changed, so only the host stage runs.

The cold base time (bootstrap with kernel) is printed per suite/arch the bench
bootstrapped: the bench host's in the empty cache, and the boot images' bases
where the normal cache did not have them (a cached one is named as such).

Then the same host is built once more with the same inputs, and the bench
says whether the bytes came out identical, and the image is flashed to a file
(bmaptool and the Python writer, each with its read-back).

Boot (skip with --no-boot): seconds from QEMU start to the first-boot runner's
`done` and QEMU's peak resident memory, for a minimal arm64 image (the bench
host), a compute-style arm64 image (base + compute layers: Docker and all) and
a minimal 32-bit image (pi2, armhf), each as a ratio to the minimal arm64 boot.
These images are built with the normal pibake cache, so cached bases are reused.

Cluster (``--cluster``, `make bench-cluster`): the shipped inventory's eight
hosts as its user builds them, ``pibake build --all``, first in an empty cache
(debs cached), then warm after one cluster-wide change that no package install
depends on (the admin's SSH key). The warm build's own log shows whether any
base was bootstrapped or any role layer run again. ``--normal-cache`` builds in
the normal pibake cache instead (the first build is then as warm as that cache).

Times are wall-clock seconds on this machine; compare ratios, not absolute
numbers across machines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent

BENCH_CLUSTER = """\
cluster:
  name: bench
  domain: bench.lan
networks:
  lan: {cidr: 192.168.77.0/24, gateway: 192.168.77.2, dns: [192.168.77.3]}
nodes:
  bench-01: {model: MODEL, network: lan, ip: 192.168.77.15}
  bench-compute: {model: pi3, network: lan, ip: 192.168.77.16}
  bench-armhf: {model: pi2, network: lan, ip: 192.168.77.17}
"""

# host -> layers of the images the boot part measures, besides bench-01
BOOT_HOSTS = {"bench-compute": "[base, compute]", "bench-armhf": "[base]"}


def make_project(root: Path, model: str, base: str = "debian-trixie") -> Path:
    (root / "profiles").mkdir(parents=True)
    shutil.copytree(REPO / "layers", root / "layers", symlinks=True)
    (root / "profiles/cluster.yaml").write_text(BENCH_CLUSTER.replace("MODEL", model))
    (root / "profiles/bench-01.yaml").write_text(f"base: {base}\nlayers: [base]\n")
    for host, layers in BOOT_HOSTS.items():
        (root / f"profiles/{host}.yaml").write_text(f"base: {base}\nlayers: {layers}\n")
    return root


class BaseTime(NamedTuple):
    what: str            # suite/arch
    seconds: float
    cold: bool           # bootstrapped now, not taken from the cache


def timed_base(project: Path, host: str) -> BaseTime:
    """The host's base (bootstrap with kernel) alone, timed; cold unless cached."""
    from builder.inventory.config import load_inventory
    from builder.pipeline import base_artifact
    from builder.plan import plan_hosts

    plan = plan_hosts(load_inventory(project), (host,))[0]
    start = time.monotonic()
    base = base_artifact(plan)
    return BaseTime(f"{base.suite}/{base.arch}", time.monotonic() - start, not plan.base_cached)


def base_lines(times: list[BaseTime]) -> list[str]:
    """One line per suite/arch: its first cold bootstrap's time, or that it came
    from the cache (then there is nothing to measure)."""
    first: dict[str, BaseTime] = {}
    for t in times:
        if t.what not in first or (t.cold and not first[t.what].cold):
            first[t.what] = t
    return [
        f"bench: cold base {t.what} (bootstrap with kernel): {t.seconds:7.1f} s" if t.cold
        else f"bench: base {t.what}: cached, not measured (empty the cache to measure it)"
        for t in first.values()
    ]


def timed_boot(image: Path, host: str) -> tuple[float, float | None]:
    """(seconds from QEMU start to done, QEMU's peak memory in MiB)."""
    from builder.vm.boot import boot_image

    result = boot_image(image, host=host, timeout=1800)
    return result.seconds, result.peak_memory_mib


def boot_part(project: Path, out: Path, cache: str | None,
              bases: list[BaseTime]) -> list[str]:
    """Build the boot hosts' images (timing their bases into ``bases``) and boot them."""
    from builder.inventory.config import load_inventory
    from builder.pipeline import build_image

    if cache is None:
        os.environ.pop("PIBAKE_CACHE", None)
    else:
        os.environ["PIBAKE_CACHE"] = cache
    from builder.plan import plan_hosts

    for host in BOOT_HOSTS:
        bases.append(timed_base(project, host))
    for plan in plan_hosts(load_inventory(project), tuple(BOOT_HOSTS)):
        build_image(plan, out)
    rows = []
    for host, what in (("bench-01", "minimal, arm64"), ("bench-compute", "compute, arm64"),
                       ("bench-armhf", "minimal, armhf")):
        seconds, peak = timed_boot(out / f"{host}.img", host)
        rows.append((host, what, seconds, peak))
    base = rows[0][2]
    return [
        f"bench: boot {host} ({what}): QEMU start to done {seconds:6.1f} s "
        f"({seconds / base:.2f}x the minimal arm64 boot), qemu peak memory "
        f"{'?' if peak is None else f'{peak:.0f}'} MiB"
        for host, what, seconds, peak in rows
    ]


def flash_part(image: Path, target: Path) -> list[str]:
    """pibake flash's write + read-back to a file on this disk, both writers:
    an upper bound for a card, whose own write speed is the limit there."""
    from builder.image import flash

    rows = []
    for use_bmaptool in (True, False):
        target.unlink(missing_ok=True)
        plan = flash.plan_flash(image, "bench-01", target, allow_file=True)
        res = flash.write_plan(plan, use_bmaptool=use_bmaptool, out=lambda s: None)
        rows.append(f"bench: flash to a file ({res.tool}): {res.data_bytes / 2**20:.0f} MiB "
                    f"written and read back in {res.seconds:.1f} s "
                    f"({res.data_bytes / 2**20 / res.seconds:.0f} MiB/s)")
    return rows


def timed_build(project: Path, host: str, out: Path) -> float:
    from builder.inventory.config import load_inventory
    from builder.pipeline import build_image
    from builder.plan import plan_hosts

    start = time.monotonic()
    build_image(plan_hosts(load_inventory(project), (host,))[0], out)
    return time.monotonic() - start


def empty_cache(cache: Path, keep_debs: bool) -> None:
    """Point pibake at the empty cache ``cache``; with ``keep_debs`` its apt
    folder is the normal cache's, so downloads do not count as build time."""
    os.environ["PIBAKE_CACHE"] = str(cache)
    if keep_debs:
        shared = Path.home() / ".cache" / "pibake" / "apt"
        shared.mkdir(parents=True, exist_ok=True)
        cache.mkdir()
        os.symlink(shared, cache / "apt")


def cluster_part(work: Path) -> list[str]:
    """The shipped inventory built with build --all, then warm after the admin's
    SSH key changed; counted from the builds' own output."""
    import re
    import subprocess

    project = work / "cluster"
    shutil.copytree(REPO / "profiles", project / "profiles")
    shutil.copytree(REPO / "layers", project / "layers", symlinks=True)
    env = dict(os.environ)

    def pibake(*args: str) -> tuple[float, str]:
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "builder", "-C", str(project), *args],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"bench: pibake {' '.join(args)} failed: "
                             f"{done.stderr.strip().splitlines()[-1:]}")
        return time.monotonic() - start, done.stdout + done.stderr

    _, plan = pibake("plan", "--all")
    stages = re.findall(r"^  (base|role)  ([0-9a-f]{16})  (\w+)$", plan, re.M)
    hosts = len(stages) // 2
    missing = {kind: len({key for k, key, state in stages if k == kind and state != "cached"})
               for kind in ("base", "role")}
    cold, _ = pibake("build", "--all")
    key = work / "admin_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f",
                    str(key)], check=True)
    cluster = project / "profiles/cluster.yaml"
    text = cluster.read_text()
    pub = key.with_suffix(".pub").read_text().strip()
    cluster.write_text(re.sub(r"ssh_authorized_keys: \[.*?\]", f"ssh_authorized_keys: ['{pub}']",
                              text, count=1))
    warm, log = pibake("build", "--all")
    bootstraps = len(re.findall(r"bootstrap", log))
    layer_runs = log.count("==> layer")
    cached = log.count("(role cached)")
    return [
        f"bench: cluster first build --all ({hosts} hosts; {missing['base']} bases and "
        f"{missing['role']} roles not cached before it): {cold:7.1f} s",
        f"bench: cluster warm build --all (admin SSH key changed): {warm:7.1f} s "
        f"({warm / max(hosts, 1):.1f} s per host), {cold / warm:.1f}x faster",
        f"bench: cluster warm build's log: {bootstraps} base bootstraps, {layer_runs} role "
        f"layer runs, {cached} of {hosts} hosts with their role cached",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.bench", description=__doc__)
    parser.add_argument("--model", default="pi3", help="Pi model of the bench host (pi3: arm64)")
    parser.add_argument("--no-deb-cache", action="store_true",
                        help="also start without downloaded .deb files")
    parser.add_argument("--no-boot", action="store_true", help="measure the build only")
    parser.add_argument("--base", default="debian-trixie", help="base of the bench hosts")
    parser.add_argument("--cluster", action="store_true",
                        help="the shipped inventory's hosts, build --all cold then warm")
    parser.add_argument("--normal-cache", action="store_true",
                        help="with --cluster: build in the normal pibake cache")
    args = parser.parse_args()
    user_cache = os.environ.get("PIBAKE_CACHE")
    if args.cluster:
        with tempfile.TemporaryDirectory(prefix="pibake-bench-") as tmp:
            work = Path(tmp)
            if not args.normal_cache:
                empty_cache(work / "cache", keep_debs=True)
            rows = cluster_part(work)
        for row in rows:
            print(row)
        return 0
    boot_rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pibake-bench-") as tmp:
        work = Path(tmp)
        project = make_project(work / "proj", args.model, args.base)
        empty_cache(work / "cache", keep_debs=not args.no_deb_cache)
        out = work / "out"
        bases = [timed_base(project, "bench-01")]
        cold = bases[0].seconds + timed_build(project, "bench-01", out)
        (project / "profiles/bench-01.yaml").write_text(
            f"base: {args.base}\nlayers: [base]\nvars:\n  base_journal_max_use: 32M\n")
        warm = timed_build(project, "bench-01", out)
        size = (out / "bench-01.img").stat().st_size
        blocks = (out / "bench-01.img").stat().st_blocks * 512
        first = (out / "bench-01.img.sha256").read_text().split()[0]
        timed_build(project, "bench-01", out)  # same inputs again: must be the same bytes
        rebuilt = (out / "bench-01.img.sha256").read_text().split()[0]
        flash_rows = flash_part(out / "bench-01.img", work / "card")
        if not args.no_boot:
            boot_rows = boot_part(project, out, user_cache, bases)
    print(f"bench: host bench-01 ({args.model}), image {size / 2**20:.0f} MiB "
          f"({blocks / 2**20:.0f} MiB mapped)")
    for line in base_lines(bases):
        print(line)
    print(f"bench: cold build (empty cache{'' if args.no_deb_cache else ', debs cached'}): "
          f"{cold:7.1f} s")
    print(f"bench: warm build (role cached, one host var changed): {warm:7.1f} s")
    print(f"bench: cold/warm ratio: {cold / warm:.1f}x")
    print(f"bench: rebuild with the same inputs identical: "
          f"{'yes' if rebuilt == first else 'NO'} (sha256 {first[:16]}…"
          f"{'' if rebuilt == first else f' then {rebuilt[:16]}…'})")
    for row in flash_rows:
        print(row)
    for row in boot_rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
