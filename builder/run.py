"""Running host commands. Every child runs in its own process group and is
killed with its group when pibake is interrupted, so Ctrl-C never leaves an
orphan qemu, mke2fs or guestfs appliance behind."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from builder.errors import BuildError, NoSpaceError, PreflightError

_children: set[subprocess.Popen[bytes]] = set()


# Where daemons and admin tools live when PATH lacks them (a plain user's shell).
_SYSTEM_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


def find(tool: str) -> str | None:
    """Path of ``tool`` on PATH or in the system's bin and sbin folders; None if absent."""
    return shutil.which(tool) or shutil.which(tool, path=_SYSTEM_PATH)


def which(tool: str, package: str) -> str:
    """Path of ``tool`` or a PreflightError naming the Debian package to install."""
    path = find(tool)
    if path is None:
        raise PreflightError(f"'{tool}' not found; install it: apt-get install {package}")
    return path


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    input: bytes | None = None,
    capture: bool = False,
    what: str | None = None,
    timeout: float | None = None,
    check: bool = True,
    on_line: Callable[[str], None] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command; raise BuildError with its last stderr lines if it fails.

    Output is captured (and returned) when ``capture``; otherwise stderr is
    captured for the error message and stdout is discarded. ``on_line`` gets
    every line of stdout and stderr as it comes (for long children such as
    mmdebstrap). ``timeout`` seconds: the child's group is killed and a
    BuildError says so. ``check=False``: a non-zero exit is returned, not raised.
    ``inherit_env=False``: the child sees only ``env``, nothing of pibake's own.
    """
    args = [os.fspath(a) for a in argv]
    full_env = dict(os.environ) if inherit_env else {}
    if env:
        full_env.update(env)
    streaming = on_line is not None
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture or streaming else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if streaming and not capture else subprocess.PIPE,
            start_new_session=True,
            preexec_fn=default_signals,
        )
    except FileNotFoundError as exc:
        raise PreflightError(f"'{args[0]}' not found; run 'make setup'") from exc
    label = what or Path(args[0]).name
    _children.add(proc)
    try:
        if streaming:
            assert on_line is not None
            out, err = _stream(proc, input, timeout, on_line, capture)
        else:
            out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise BuildError(f"{label} did not finish in {timeout:g} s; stopped it") from None
    except BaseException:
        kill_group(proc)
        raise
    finally:
        _children.discard(proc)
    if proc.returncode != 0 and check:
        tail = " | ".join(_telling_lines(err.decode(errors="replace")))
        if "No space left on device" in tail:
            raise NoSpaceError(f"{label}: no space left on device; free some space and build "
                               "again")
        raise BuildError(f"{label} failed (exit {proc.returncode}): {tail or 'no output'}")
    return subprocess.CompletedProcess(args, proc.returncode, out or b"", err or b"")


def default_signals() -> None:
    """In the child, before exec: SIGINT and SIGQUIT at their defaults, even when
    pibake itself started with them ignored (a background job, a CI runner), so
    a group kill with SIGINT stops the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _stream(proc: subprocess.Popen[bytes], input: bytes | None, timeout: float | None,
            on_line: Callable[[str], None], capture: bool) -> tuple[bytes, bytes]:
    """Read the child's lines as they come, calling ``on_line`` for each; the
    last lines are kept for the error message."""
    tail: collections.deque[bytes] = collections.deque(maxlen=50)
    lines: list[bytes] = []
    err_tail: collections.deque[bytes] = collections.deque(maxlen=50)

    def pump(stream: IO[bytes], keep: collections.deque[bytes], store: bool) -> None:
        for raw in iter(stream.readline, b""):
            keep.append(raw)
            if store:
                lines.append(raw)
            on_line(raw.decode(errors="replace").rstrip("\n"))

    assert proc.stdout is not None
    readers = [threading.Thread(target=pump, args=(proc.stdout, tail, capture), daemon=True)]
    if proc.stderr is not None:
        readers.append(threading.Thread(target=pump, args=(proc.stderr, err_tail, False),
                                        daemon=True))
    for t in readers:
        t.start()
    if input is not None and proc.stdin is not None:
        with proc.stdin:
            proc.stdin.write(input)
    proc.wait(timeout=timeout)
    for t in readers:
        t.join()
    err = b"".join(err_tail) if proc.stderr is not None else b"".join(tail)
    return b"".join(lines), err
def run_lines(
    argv: Sequence[str | os.PathLike[str]],
    on_line: Callable[[str], None],
    *,
    env: Mapping[str, str] | None = None,
    what: str | None = None,
) -> None:
    """Run a command, handing each line of its merged stdout and stderr to
    ``on_line`` as it comes (progress); fail as ``run`` does."""
    args = [os.fspath(a) for a in argv]
    try:
        proc = subprocess.Popen(args, env={**os.environ, **(env or {})},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=default_signals)
    except FileNotFoundError as exc:
        raise PreflightError(f"'{args[0]}' not found; run 'make setup'") from exc
    _children.add(proc)
    tail: deque[str] = deque(maxlen=200)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            on_line(line)
        proc.wait()
    except BaseException:
        kill_group(proc)
        raise
    finally:
        _children.discard(proc)
    if proc.returncode != 0:
        _fail(what or Path(args[0]).name, proc.returncode, "\n".join(tail))


def _fail(label: str, code: int, output: str) -> None:
    tail = " | ".join(_telling_lines(output))
    if "No space left on device" in tail:
        raise NoSpaceError(f"{label}: no space left on device; free some space and build again")
    raise BuildError(f"{label} failed (exit {code}): {tail or 'no output'}")


def _telling_lines(stderr: str, keep: int = 3) -> list[str]:
    """The lines that say what went wrong: apt's and dpkg's ``E:``/``error`` lines
    when there are any (mmdebstrap ends with generic clean-up lines), else the
    last lines."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "dpkg: error", "error:", "Error:"))]
    return (errors or lines)[-keep:]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a child's whole process group, then reap it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    except ProcessLookupError:
        pass


def register(proc: subprocess.Popen[bytes]) -> None:
    """Track a long-running child started elsewhere (qemu) for cleanup."""
    _children.add(proc)


def unregister(proc: subprocess.Popen[bytes]) -> None:
    _children.discard(proc)


def kill_all() -> None:
    for proc in list(_children):
        kill_group(proc)
        _children.discard(proc)
