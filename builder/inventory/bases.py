"""The catalog of named bases a profile can start from.

Two kinds: ``bootstrap`` bases are built from a Debian archive with mmdebstrap
(the archive is the host's apt configuration unless cluster.yaml names a
mirror); ``image`` bases are downloaded Raspberry Pi images, verified by
sha256 before use. Users add their own image bases (a URL or a local path) in
cluster.yaml under ``bases:``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

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

    def supports(self, model: Model) -> bool:
        if self.kind is BaseKind.bootstrap:
            return True
        assert self.arch is not None
        return model in ARCH_MODELS[self.arch]


CATALOG: dict[str, Base] = {
    b.name: b
    for b in (
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
