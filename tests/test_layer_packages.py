"""Every shipped layer's package list resolves on both Debian suites, for each
arch whose hosts select the layer (integration: asks the host's archive)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.emulate.archive import scratch_apt
from builder.emulate.bootstrap import PI_FAMILIES, render_sources, spec_for
from builder.inventory.config import load_inventory

pytestmark = [pytest.mark.integration, pytest.mark.roles]

REPO = Path(__file__).resolve().parent.parent
SUITES = ("trixie", "bookworm")


def _wanted() -> dict[tuple[str, str], dict[str, tuple[str, ...]]]:
    """(suite, arch) -> layer -> its package list for that suite."""
    inv = load_inventory(REPO)
    wanted: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}
    for host, profile in inv.profiles.items():
        arch = PI_FAMILIES[str(inv.node(host).model)].arch
        for suite in SUITES:
            for name in profile.layers:
                wanted.setdefault((suite, arch), {})[name] = \
                    inv.layers[name].packages_for(suite)
    return wanted


@pytest.mark.parametrize("suite_arch", sorted(_wanted()), ids="-".join)
def test_layer_packages_resolve(suite_arch: tuple[str, str]) -> None:
    suite, arch = suite_arch
    model = next(m for m, f in PI_FAMILIES.items() if f.arch == arch)
    spec = spec_for(model, suite)
    with scratch_apt(arch, sources_text=render_sources(spec)) as apt:
        failed = apt.update()
        assert suite not in failed, failed
        for layer, packages in sorted(_wanted()[suite_arch].items()):
            # raises PreflightError naming the package apt cannot install
            assert apt.downloads(list(packages)) or not packages, layer
