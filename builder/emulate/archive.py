"""What the archive can serve, asked in seconds before minutes of emulated work.

A scratch apt root (its own lists, cache and status; the host's apt state is
never touched) fetches the indexes of the base's sources for one arch,
resolves the package set that a bootstrap or a role install will download, and
HEAD-checks every ``.deb`` that the shared apt cache does not already hold. An
archive whose indexes name files it no longer serves (seen here: trixie armel,
where point-release files of libc6, apt and bind9 answer 404) then stops the
build with one line instead of failing five minutes into mmdebstrap.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from builder.errors import PreflightError
from builder.run import which

_SHOWN_MISSING = 5
_HEAD_WORKERS = 12
_HEAD_TIMEOUT = 20.0


@dataclass(frozen=True)
class Deb:
    package: str
    uri: str
    filename: str
    size: int


def failed_suites(apt_output: str) -> dict[str, str]:
    """Suite -> first reason, from ``apt-get update`` output's ``Failed to fetch``
    lines: ``E:`` for a broken index, ``W:`` for an archive apt cannot reach at
    all (a name that does not resolve, a refused connection)."""
    failed: dict[str, str] = {}
    for line in apt_output.splitlines():
        m = re.match(r"[EW]: Failed to fetch \S*/dists/([^/\s]+)/\S*\s+(.*)", line)
        if m:
            failed.setdefault(m.group(1), m.group(2).strip())
    return failed


def parse_print_uris(text: str) -> list[Deb]:
    """``apt-get --print-uris`` lines: ``'URI' FILE SIZE HASH``."""
    debs = []
    for line in text.splitlines():
        m = re.match(r"^'([^']+\.deb)' (\S+) (\d+)", line)
        if m:
            name = m.group(2).split("_", 1)[0]
            debs.append(Deb(name, m.group(1), m.group(2), int(m.group(3))))
    return debs


class ScratchApt:
    """apt-get against a throw-away state folder for one arch."""

    def __init__(self, root: Path, arch: str, *, sources_text: str | None = None,
                 etc_apt: Path | None = None, status: Path | None = None) -> None:
        self.root = root
        self.arch = arch
        for sub in ("lists/partial", "cache/archives/partial", "sources"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        status_file = root / "status"
        status_file.write_bytes(status.read_bytes() if status and status.is_file() else b"")
        if sources_text is not None:
            (root / "sources/pibake.sources").write_text(sources_text)
        source_list = etc_apt / "sources.list" if etc_apt else Path("/dev/null")
        source_parts = etc_apt / "sources.list.d" if etc_apt else root / "sources"
        self.opts: dict[str, object] = {
            "Dir::State": root, "Dir::State::Lists": root / "lists",
            "Dir::State::status": status_file, "Dir::Cache": root / "cache",
            "Dir::Etc::SourceList": source_list, "Dir::Etc::SourceParts": source_parts,
            "Dir::Etc::Preferences": "/dev/null", "Dir::Etc::PreferencesParts": root / "sources",
            "APT::Architecture": arch, "APT::Architectures": arch,
            "Acquire::Languages": "none", "Acquire::Retries": "3", "Debug::NoLocking": "1",
            "APT::Install-Recommends": "false",
        }

    def _argv(self, *args: str) -> list[str]:
        argv = [which("apt-get", "apt"), "-q"]
        for name, value in self.opts.items():
            argv += ["-o", f"{name}={value}"]
        return argv + list(args)

    def update(self) -> dict[str, str]:
        """Fetch the indexes; return the suites that failed and why."""
        proc = subprocess.run(self._argv("update"), capture_output=True, text=True,
                              start_new_session=True)
        return failed_suites(proc.stdout + proc.stderr)

    def essential(self) -> list[str]:
        """What mmdebstrap's minbase variant starts from: Essential: yes, and apt."""
        argv = [which("apt-cache", "apt"), *self._argv("dumpavail")[2:]]
        proc = subprocess.run(argv, capture_output=True, text=True, start_new_session=True)
        names = {"apt"}
        name = ""
        for line in proc.stdout.splitlines():
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line == "Essential: yes" and name:
                names.add(name)
        return sorted(names)

    def downloads(self, packages: Sequence[str]) -> list[Deb]:
        """The .debs that installing ``packages`` (no recommends) downloads."""
        proc = subprocess.run(
            self._argv("install", "--print-uris", "-y", "--no-install-recommends",
                       *packages),
            capture_output=True, text=True, start_new_session=True)
        if proc.returncode != 0:
            errors = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()
                      if ln.startswith("E:") or "but it is not" in ln or "has no installation"
                      in ln or "Unable to locate" in ln]
            raise PreflightError(
                f"the archive cannot resolve the package set for {self.arch}: "
                f"{' | '.join(errors[:3]) or 'apt-get failed'}"
            )
        return parse_print_uris(proc.stdout)


@contextmanager
def scratch_apt(arch: str, *, sources_text: str | None = None, etc_apt: Path | None = None,
                status: Path | None = None) -> Iterator[ScratchApt]:
    with tempfile.TemporaryDirectory(prefix="pibake-apt-probe-") as tmp:
        yield ScratchApt(Path(tmp), arch, sources_text=sources_text, etc_apt=etc_apt,
                         status=status)


def probe_sources(sources_text: str, arch: str) -> dict[str, str]:
    """Fetch the package indexes of ``sources_text`` for ``arch`` into a scratch
    folder; return the suites that failed."""
    with scratch_apt(arch, sources_text=sources_text) as apt:
        return apt.update()


def _served(uri: str) -> str | None:
    """None when ``uri`` is served, else why not (``404 Not Found``)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return None if Path(unquote(parsed.path)).is_file() else "no such file"
    req = urllib.request.Request(uri, method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=_HEAD_TIMEOUT):
            return None
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def unserved(debs: Sequence[Deb], apt_cache: Path | None = None) -> list[tuple[Deb, str]]:
    """The debs neither in ``apt_cache`` nor served by the archive, in order."""
    todo = [d for d in debs
            if apt_cache is None or not (apt_cache / d.filename).is_file()]
    with ThreadPoolExecutor(max_workers=_HEAD_WORKERS) as pool:
        answers = list(pool.map(_served, [d.uri for d in todo]))
    return [(d, why) for d, why in zip(todo, answers, strict=True) if why is not None]


def require_served(apt: ScratchApt, packages: Sequence[str], *, suite: str, what: str,
                   fix: str, apt_cache: Path | None = None) -> int:
    """Raise PreflightError, one line, unless every .deb of ``packages`` can be had.

    Returns how many .debs the set needs (cached or served)."""
    debs = apt.downloads(packages)
    missing = unserved(debs, apt_cache)
    if missing:
        names = ", ".join(d.package for d, _ in missing[:_SHOWN_MISSING])
        more = f" and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
        raise PreflightError(
            f"{suite}/{apt.arch}: the archive does not serve {len(missing)} of the {len(debs)} "
            f".debs {what} needs ({names}{more}: {missing[0][1]}); {fix}"
        )
    return len(debs)


def check_role_packages(tree: Path, suite: str, arch: str, packages: Sequence[str],
                        apt_cache: Path | None = None) -> int:
    """Before a role's emulated install: resolve ``packages`` against the
    base's own sources and dpkg status, and require every new .deb be served.

    Returns how many .debs the install downloads (0: nothing to do)."""
    status = tree / "var/lib/dpkg/status"
    installed = _installed(status)
    if all(p.split("=", 1)[0] in installed for p in packages):
        return 0
    with scratch_apt(arch, etc_apt=tree / "etc/apt", status=status) as apt:
        failed = apt.update()
        if suite in failed:
            raise PreflightError(
                f"the archive's {suite}/{arch} package index cannot be fetched: "
                f"{failed[suite]}; check the base's apt sources or set a mirror in cluster.yaml")
        return require_served(
            apt, packages, suite=suite, what="the role's packages",
            fix="set cluster.mirror to an archive that serves them, or use another base "
                "for this host", apt_cache=apt_cache)


def _installed(status: Path) -> set[str]:
    names: set[str] = set()
    name = ""
    try:
        text = status.read_text(errors="replace")
    except OSError:
        return names
    for line in text.splitlines():
        if line.startswith("Package: "):
            name = line[9:].strip()
        elif line.startswith("Status: ") and line.endswith(" installed") and name:
            names.add(name)
    return names
