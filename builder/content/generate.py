"""Generators: tools that turn a folder of a layer's rendered files into more files.

    # layers/lanmisc/layer.yaml
    generate:
      - tool: hugo
        source: /srv/hugo/site        # a folder of the layer's templates/ or files/
        dest: /var/www/lanmisc/site   # where the output goes in the image

A generator runs per host after its templates are rendered (plan, ``pibake
render`` and the host stage alike), on this machine: the build host's Debian
package of the tool, as the daemons' checkers do. Its output is plain files,
the same for every architecture, so nothing needs to run on the Pi. Only the
tools of ``GENERATORS`` run: a layer names one, never a host command.

Each run is sealed off: a scratch folder holds the staged source (mtimes set
to the build's SOURCE_DATE_EPOCH), the output, HOME and the tool's caches; the
environment is only what the table gives (nothing of the caller's, so a
stray ``HUGO_BASEURL`` cannot change a page); stdin is /dev/null; a timeout.
The output is read back as bytes and the scratch folder removed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from builder.errors import BuildError, ConfigError
from builder.run import run, which

# Measured: Hugo 0.111 (Debian 12) builds the lanmisc site in 0.06-0.1 s warm,
# 0.6 s on its first run after install; two minutes is for a loaded build host
# and a much larger site, not for a hung one to hold a build for long.
TIMEOUT = 120


@dataclass(frozen=True)
class Generator:
    program: str
    package: str                                   # the Debian package that ships it
    argv: Callable[[str, Path, Path], list[str]]   # (program, staged source, output) -> argv
    env: Callable[[Path], dict[str, str]]          # scratch folder -> the whole environment


def _hugo_argv(program: str, source: Path, out: Path) -> list[str]:
    return [program, "--source", str(source), "--destination", str(out), "--quiet"]


def _hugo_env(scratch: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(scratch / "home"),
        "TMPDIR": str(scratch / "tmp"),
        "HUGO_CACHEDIR": str(scratch / "cache"),
        "TZ": "UTC",
        "LANG": "C.UTF-8",
        # No network and no other programs: resources.GetRemote and the
        # asset pipeline's external tools (postcss, npx, go for modules) are
        # refused by Hugo's own security policy.
        "HUGO_SECURITY_HTTP_URLS": "none",
        "HUGO_SECURITY_EXEC_ALLOW": "none",
        # Hugo injects <meta name="generator" content="Hugo 0.111.3"> into every
        # page by default: the build host's version, not the inventory's.
        "HUGO_DISABLEHUGOGENERATORINJECT": "true",
    }


GENERATORS: Mapping[str, Generator] = MappingProxyType({
    "hugo": Generator("hugo", "hugo", _hugo_argv, _hugo_env),   # a Hugo site -> static HTML
})


def run_generator(tool: str, files: Mapping[str, bytes], source: str, epoch: int,
                  where: str) -> dict[str, bytes]:
    """Run ``tool`` over ``files`` (paths relative to the image folder
    ``source``); return its output files (paths relative to its output
    folder). A failure is one ConfigError: ``where``, then the tool's own
    telling lines with the scratch folder shown as ``source``."""
    gen = GENERATORS[tool]
    program = which(gen.program, gen.package)
    with tempfile.TemporaryDirectory(prefix="pibake-generate-") as tmp:
        scratch = Path(tmp)
        staged, out = scratch / "source", scratch / "out"
        for d in ("home", "tmp", "cache"):
            (scratch / d).mkdir()
        _stage(staged, files, epoch)
        try:
            proc = run(gen.argv(program, staged, out), env=gen.env(scratch), inherit_env=False,
                       cwd=scratch, capture=True, check=False, timeout=TIMEOUT, what=tool)
        except BuildError:
            raise BuildError(f"{where}: {tool} did not finish in {TIMEOUT} s; stopped it") from None
        if proc.returncode != 0:
            message = _message((proc.stderr + proc.stdout).decode(errors="replace"),
                               staged, scratch, source)
            raise ConfigError(f"{where}: {tool} failed: {message}")
        return _collect(out)


def _stage(root: Path, files: Mapping[str, bytes], epoch: int) -> None:
    root.mkdir()
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # A site may date pages by file times (Hugo's :fileModTime): the build's
    # one timestamp, not the moment of staging.
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (epoch, epoch))
    os.utime(root, (epoch, epoch))


def _collect(out: Path) -> dict[str, bytes]:
    result: dict[str, bytes] = {}
    if not out.is_dir():
        return result
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                result[path.relative_to(out).as_posix()] = path.read_bytes()
    return result


def _message(output: str, staged: Path, scratch: Path, source: str) -> str:
    """The tool's telling lines, with staged paths shown as the image's."""
    text = output.replace(str(staged), source).replace(str(scratch), "")
    lines = [re.sub(r"^(Error: )+(Error building site: )?", "", ln.strip())
             for ln in text.splitlines() if ln.strip()]
    telling = [ln for ln in lines if re.search(r"error|fail|unexpected|not |can't", ln, re.I)]
    return " | ".join((telling or lines)[:2]) or "no output"

