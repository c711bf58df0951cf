"""The catalog of named bases a profile can start from.

Two kinds: ``bootstrap`` bases are built from a Debian archive with mmdebstrap
(the archive is the host's apt configuration unless cluster.yaml names a
mirror); ``image`` bases are downloaded Raspberry Pi images, verified by
sha256 before use. Users add their own image bases (a URL or a local path) in
cluster.yaml under ``bases:``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from builder.emulate.bootstrap import PI_FAMILIES


class Model(StrEnum):
    pi0 = "pi0"
    pi1 = "pi1"
    pi2 = "pi2"
    pi3 = "pi3"
    pi4 = "pi4"


class BaseKind(StrEnum):
    bootstrap = "bootstrap"
    image = "image"


# Which models can run which userland architecture.
ARCH_MODELS: dict[str, frozenset[Model]] = {
    "armel": frozenset(Model),
    "armhf": frozenset(Model),  # Raspbian's armhf is ARMv6 hard-float: every Pi
    "arm64": frozenset({Model.pi3, Model.pi4}),
}


# End of security support per suite and arch: Debian's regular security
# support, then LTS where LTS covers the arch (bookworm LTS: amd64, arm64,
# armhf, i386; not armel). Trixie's LTS arches are not announced yet: its
# dates are the end of regular security support.
SECURITY_UNTIL: dict[str, dict[str, datetime.date]] = {
    "stretch": dict.fromkeys(("armel", "armhf", "arm64"), datetime.date(2022, 6, 30)),
    "bookworm": {"armel": datetime.date(2026, 6, 10), "armhf": datetime.date(2028, 6, 30),
                 "arm64": datetime.date(2028, 6, 30)},
    "trixie": dict.fromkeys(("armel", "armhf", "arm64"), datetime.date(2028, 8, 9)),
}

DEFAULT_BASE = "debian-trixie"


@dataclass(frozen=True)
class Base:
    name: str
    kind: BaseKind
    suite: str
    description: str
    # image bases only
    url: str | None = None
    sha256: str | None = None
    arch: str | None = None
    # where the FAT boot partition is mounted in the root file system
    boot_mount: str = "/boot/firmware"
    # the network stack the host layer writes static configuration for
    network: str = "networkd"  # networkd | dhcpcd | networkmanager
    # file-system feature set the base's kernel and e2fsprogs understand
    fs_compat: str = "bookworm"

    def arch_for(self, model: Model) -> str:
        if self.kind is BaseKind.bootstrap:
            return PI_FAMILIES[str(model)].arch
        assert self.arch is not None
        return self.arch

    def arches(self) -> tuple[str, ...]:
        if self.kind is BaseKind.bootstrap:
            return tuple(sorted({f.arch for f in PI_FAMILIES.values()}))
        assert self.arch is not None
        return (self.arch,)

    def security_until(self, arch: str) -> datetime.date | None:
        """Last day of security support for ``arch``; None when not known."""
        return SECURITY_UNTIL.get(self.suite, {}).get(arch)

    def unsupported_notice(self, arch: str, today: datetime.date) -> str | None:
        """One line when this base gets no security updates for ``arch`` any more."""
        until = self.security_until(arch)
        if until is None or until >= today:
            return None
        return (f"{self.name} on {arch} has had no security support since {until}; "
                f"images built from it get no security updates (see pibake bases)")

    def supports(self, model: Model) -> bool:
        if self.kind is BaseKind.bootstrap:
            return True
        assert self.arch is not None
        return model in ARCH_MODELS[self.arch]


CATALOG: dict[str, Base] = {
    b.name: b
    for b in (
        Base(
            name="debian-trixie",
            kind=BaseKind.bootstrap,
            suite="trixie",
            description="Debian 13 bootstrapped with mmdebstrap, kernel per Pi family",
        ),
        Base(
            name="debian-bookworm",
            kind=BaseKind.bootstrap,
            suite="bookworm",
            description="Debian 12 bootstrapped with mmdebstrap, kernel per Pi family",
        ),
        Base(
            name="raspbian-stretch-lite",
            kind=BaseKind.image,
            suite="stretch",
            description="Raspbian 9 lite, 2018-11-13 (the reference cluster's release)",
            url=(
                "https://downloads.raspberrypi.org/raspbian_lite/images/"
                "raspbian_lite-2018-11-15/2018-11-13-raspbian-stretch-lite.zip"
            ),
            sha256="47ef1b2501d0e5002675a50b6868074e693f78829822eef64f3878487953234d",
            arch="armhf",
            boot_mount="/boot",
            network="dhcpcd",
            fs_compat="stretch",
        ),
        Base(
            name="raspios-bookworm-lite-arm64",
            kind=BaseKind.image,
            suite="bookworm",
            description="Raspberry Pi OS lite 64-bit, 2024-11-19",
            url=(
                "https://downloads.raspberrypi.com/raspios_lite_arm64/images/"
                "raspios_lite_arm64-2024-11-19/2024-11-19-raspios-bookworm-arm64-lite.img.xz"
            ),
            sha256="ab99e6a41bdc10d8bbff7edbc86d7abfe0eea2bacc109b62c7ee6f8730b5c3e8",
            arch="arm64",
            boot_mount="/boot/firmware",
            network="networkmanager",
            fs_compat="bookworm",
        ),
    )
}


def support_summary(base: Base, today: datetime.date | None = None) -> str:
    """``arm64 until 2028-06-30, armel ended 2026-06-10`` (``unknown`` without dates)."""
    today = today or datetime.date.today()
    parts = []
    for arch in base.arches():
        until = base.security_until(arch)
        if until is None:
            parts.append(f"{arch} unknown")
        else:
            parts.append(f"{arch} {'ended' if until < today else 'until'} {until}")
    return ", ".join(parts)


def support_notices(inv: Any, hosts: Iterable[str],
                    today: datetime.date | None = None) -> list[str]:
    """One line per base and arch that ``hosts`` build on and that has lost
    security support, naming the hosts."""
    today = today or datetime.date.today()
    by_pair: dict[tuple[str, str], list[str]] = {}
    bases: dict[str, Base] = {}
    for host in hosts:
        base = inv.profile(host).base
        arch = base.arch_for(inv.node(host).model)
        bases[base.name] = base
        by_pair.setdefault((base.name, arch), []).append(host)
    lines = []
    for (name, arch), names in by_pair.items():
        text = bases[name].unsupported_notice(arch, today)
        if text is not None:
            lines.append(f"{text}: {', '.join(names)}")
    return lines
