"""Every rendered daemon config is checked by the daemon's own checker.

``check_rendered`` stages a host's rendered files in a temporary root and runs
the checker of each daemon config among them, on this machine's x86 build of
the same Debian package: ``kea-dhcp4 -t``, ``kea-ctrl-agent -t``,
``named-checkconf -z``, ``named-checkzone``, ``chronyd -p``, ``dhcpd -t``.
``pibake check`` runs it for every host and ``pibake build`` before any image
work starts, so a config the daemon would refuse never reaches an image. A
failure is one line: host, file, checker and the checker's own message. A
missing checker names the Debian package that has it (``make setup``
installs them all).

Differences from the image, on purpose: Kea's hooks are loaded from this
machine's multiarch folder instead of the image's (same Kea version on the
same Debian release), and named checks the rendered files over this
machine's stock ``/etc/bind`` (the package's named.conf and default zones).
vsftpd.conf is checked with the role layers' configs (rolecheck).
"""

from __future__ import annotations

import glob
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.content.render import Rendered
from builder.errors import ConfigError, PreflightError
from builder.run import run, which

Argv = list[str]


@dataclass(frozen=True)
class Checker:
    name: str                    # shown in errors: "kea-dhcp4 -t"
    dest: str                    # the rendered file that triggers it (regex on the image path)
    tool: str
    package: str                 # Debian package that ships the tool
    argv: Callable[[str, Path, str], Sequence[Argv]]  # (tool, staged root, dest) -> commands


def _kea(tool: str, root: Path, dest: str) -> list[Argv]:
    staged = root / dest.lstrip("/")
    host_hooks = sorted(glob.glob("/usr/lib/*/kea/hooks"))
    if host_hooks:
        text = staged.read_text()
        staged.write_text(re.sub(r"/usr/lib/[^/\"]+/kea/hooks", host_hooks[0], text))
    return [[tool, "-t", str(staged)]]


def _named_conf(tool: str, root: Path, dest: str) -> list[Argv]:
    return [[tool, "-z", "-t", str(root), "/etc/bind/named.conf"]]


def _zone(tool: str, root: Path, dest: str) -> list[Argv]:
    text = (root / dest.lstrip("/")).read_text()
    origin = re.search(r"^\$ORIGIN\s+(\S+)", text, re.M)
    if origin is None:
        raise ConfigError(f"{dest}: zone file without $ORIGIN; start it with $ORIGIN zone.")
    return [[tool, "-q", "-k", "fail", "-t", str(root), origin.group(1).rstrip("."), dest]]


def _chrony(tool: str, root: Path, dest: str) -> list[Argv]:
    return [[tool, "-p", "-f", str(root / dest.lstrip("/"))]]


def _dhcpd(tool: str, root: Path, dest: str) -> list[Argv]:
    staged = root / dest.lstrip("/")
    text = staged.read_text()
    block = re.search(r"failover peer \"[^\"]+\" \{(.*?)\n\}", text, re.S)
    if block and re.search(r"^\s*secondary;", block.group(1), re.M) and \
            re.search(r"^\s*(mclt|split|hba)\b", block.group(1), re.M):
        # dhcpd -t accepts it, but the man page forbids it: the primary alone sets them.
        raise ConfigError(f"{dest}: failover peer: mclt/split/hba on the secondary; set them on "
                          "the primary only")
    return [[tool, "-t", "-q", "-cf", str(staged), "-lf", "/dev/null"]]


CHECKERS: tuple[Checker, ...] = (
    Checker("kea-dhcp4 -t", r"/etc/kea/kea-dhcp4\.conf", "kea-dhcp4", "kea-dhcp4-server",
            _kea),
    Checker("kea-ctrl-agent -t", r"/etc/kea/kea-ctrl-agent\.conf", "kea-ctrl-agent",
            "kea-ctrl-agent", _kea),
    # zones first: a bad zone is named by its own file, not by named.conf's test load
    Checker("named-checkzone", r"/etc/bind/.*/db\.[^/]+", "named-checkzone", "bind9-utils",
            _zone),
    Checker("named-checkconf -z", r"/etc/bind/named\.conf.*", "named-checkconf", "bind9-utils",
            _named_conf),
    Checker("chronyd -p", r"/etc/chrony/chrony\.conf", "chronyd", "chrony", _chrony),
    Checker("dhcpd -t", r"/etc/dhcp/dhcpd\.conf", "dhcpd", "isc-dhcp-server", _dhcpd),
)


def checks_for(rendered: Sequence[Rendered]) -> list[tuple[Checker, str]]:
    """(checker, file) pairs to run; named-checkconf once for all of named.conf*."""
    result: list[tuple[Checker, str]] = []
    seen: set[str] = set()
    final = list({r.dest: r for r in rendered}.values())  # a later layer's file replaces
    for c in CHECKERS:
        for r in final:
            once = c.tool == "named-checkconf" and c.name in seen
            if re.fullmatch(c.dest, r.dest) and not once:
                result.append((c, r.dest))
                seen.add(c.name)
    return result


def _tools(needed: Sequence[Checker]) -> dict[str, str]:
    """Each checker's path; every missing one in one line, before any check runs."""
    found: dict[str, str] = {}
    missing: dict[str, str] = {}
    for c in needed:
        try:
            found[c.tool] = which(c.tool, c.package)
        except PreflightError:
            missing[c.tool] = c.package
    if missing:
        tools = ", ".join(sorted(missing))
        packages = " ".join(sorted(set(missing.values())))
        raise PreflightError(f"daemon config checker(s) not found: {tools}; install them: "
                             f"apt-get install {packages} (or run make setup)")
    return found


def stage(root: Path, rendered: Sequence[Rendered]) -> None:
    if any(r.dest.startswith("/etc/bind/") for r in rendered) and Path("/etc/bind").is_dir():
        # The package's own named.conf and default zones, which ours include into.
        shutil.copytree("/etc/bind", root / "etc/bind", dirs_exist_ok=True)
        if Path("/usr/share/dns").is_dir():   # root hints the default zones name
            shutil.copytree("/usr/share/dns", root / "usr/share/dns", dirs_exist_ok=True)
    for d in ("var/cache/bind", "var/lib/bind", "run/named"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for r in rendered:
        path = root / r.dest.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(r.data)


def check_rendered(host: str, rendered: Sequence[Rendered]) -> int:
    """Run every applicable checker (these, then the role layers' in rolecheck);
    return how many configs were checked. ConfigError on the first failure."""
    from builder.content.rolecheck import check_rendered as check_role_configs

    return _check_lan_configs(host, rendered) + check_role_configs(host, tuple(rendered))


def _check_lan_configs(host: str, rendered: Sequence[Rendered]) -> int:
    todo = checks_for(rendered)
    if not todo:
        return 0
    tools = _tools([c for c, _ in todo])
    with tempfile.TemporaryDirectory(prefix="pibake-check-") as tmp:
        root = Path(tmp)
        stage(root, rendered)
        for checker, dest in todo:
            try:
                commands = checker.argv(tools[checker.tool], root, dest)
            except ConfigError as exc:
                raise ConfigError(f"{host}: {exc}") from None
            for argv in commands:
                proc = run(argv, capture=True, check=False, what=checker.name)
                if proc.returncode != 0:
                    raise ConfigError(f"{host}: {dest}: {checker.name} failed: "
                                      f"{_message(proc.stdout + proc.stderr, root)}")
    return len(todo)


def _message(output: bytes, root: Path) -> str:
    """The checker's telling lines, with the staging folder taken out of paths."""
    text = output.decode(errors="replace").replace(str(root), "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    telling = [ln for ln in lines if re.search(r"error|fail|invalid|unexpected|not |bad ",
                                               ln, re.I)]
    picked = (telling or lines)[:2]
    return " | ".join(picked) or "no output"
