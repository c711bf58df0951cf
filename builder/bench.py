"""`make bench`: the same host built cold and warm in one run, as a ratio.

Cold: an empty pibake cache (base bootstrap, role layers in the emulated
chroot, host image). Downloaded .deb files are kept in a shared apt cache so
the archive's speed does not drown the measurement; pass --no-deb-cache to
drop that too. Warm: the role is cached and one host variable changed, so only
the host stage runs. Times are wall-clock seconds on this machine; compare
ratios, not absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BENCH_CLUSTER = """\
cluster:
  name: bench
  domain: bench.lan
networks:
  lan: {cidr: 10.0.2.0/24, gateway: 10.0.2.2, dns: [10.0.2.3]}
nodes:
  bench-01: {model: MODEL, network: lan, ip: 10.0.2.15}
"""


def make_project(root: Path, model: str) -> Path:
    (root / "profiles").mkdir(parents=True)
    shutil.copytree(REPO / "layers", root / "layers", symlinks=True)
    (root / "profiles/cluster.yaml").write_text(BENCH_CLUSTER.replace("MODEL", model))
    (root / "profiles/bench-01.yaml").write_text("base: debian-bookworm\nlayers: [base]\n")
    return root


def timed_build(project: Path, host: str, out: Path) -> float:
    from builder.config import load_inventory
    from builder.pipeline import build_image

    start = time.monotonic()
    build_image(load_inventory(project), host, out)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.bench", description=__doc__)
    parser.add_argument("--model", default="pi3", help="Pi model of the bench host (pi3: arm64)")
    parser.add_argument("--no-deb-cache", action="store_true",
                        help="also start without downloaded .deb files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pibake-bench-") as tmp:
        work = Path(tmp)
        project = make_project(work / "proj", args.model)
        os.environ["PIBAKE_CACHE"] = str(work / "cache")
        if not args.no_deb_cache:
            shared = Path.home() / ".cache" / "pibake" / "apt"
            shared.mkdir(parents=True, exist_ok=True)
            (work / "cache").mkdir()
            os.symlink(shared, work / "cache" / "apt")
        out = work / "out"
        cold = timed_build(project, "bench-01", out)
        (project / "profiles/bench-01.yaml").write_text(
            "base: debian-bookworm\nlayers: [base]\nvars:\n  base_journal_max_use: 32M\n")
        warm = timed_build(project, "bench-01", out)
        size = (out / "bench-01.img").stat().st_size
        blocks = (out / "bench-01.img").stat().st_blocks * 512
    print(f"bench: host bench-01 ({args.model}), image {size / 2**20:.0f} MiB "
          f"({blocks / 2**20:.0f} MiB mapped)")
    print(f"bench: cold build (empty cache{'' if args.no_deb_cache else ', debs cached'}): "
          f"{cold:7.1f} s")
    print(f"bench: warm build (role cached, one host var changed): {warm:7.1f} s")
    print(f"bench: cold/warm ratio: {cold / warm:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
