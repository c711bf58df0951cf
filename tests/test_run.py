"""builder.run: one-line errors from failed commands."""

from __future__ import annotations

import signal
import time

import pytest

from builder.errors import BuildError, PreflightError
from builder.run import run, which


def test_failure_names_the_command_and_its_last_lines() -> None:
    with pytest.raises(BuildError) as err:
        run(["sh", "-c", "echo one >&2; echo two >&2; echo three >&2; echo four >&2; exit 3"],
            what="demo")
    assert str(err.value) == "demo failed (exit 3): two | three | four"


def test_apt_error_lines_win_over_clean_up_noise() -> None:
    script = ("echo 'E: Failed to fetch Packages.xz  File has unexpected size' >&2; "
              "echo 'W: some warning' >&2; echo 'removing tempdir' >&2; exit 100")
    with pytest.raises(BuildError) as err:
        run(["sh", "-c", script], what="mmdebstrap")
    assert str(err.value) == ("mmdebstrap failed (exit 100): E: Failed to fetch Packages.xz  "
                              "File has unexpected size")


def test_disk_full_is_said_plainly() -> None:
    with pytest.raises(BuildError) as err:
        run(["sh", "-c", "echo 'write error: No space left on device' >&2; exit 1"], what="cp")
    assert str(err.value) == "cp: no space left on device; free some space and build again"


def test_missing_program() -> None:
    with pytest.raises(PreflightError) as err:
        run(["pibake-no-such-tool"])
    assert str(err.value) == "'pibake-no-such-tool' not found; run 'make setup'"
    with pytest.raises(PreflightError) as err:
        which("pibake-no-such-tool", "some-package")
    assert str(err.value) == ("'pibake-no-such-tool' not found; install it: "
                              "apt-get install some-package")


def test_timeout_stops_the_child_and_says_so() -> None:
    start = time.monotonic()
    with pytest.raises(BuildError) as err:
        run(["sh", "-c", "sleep 30"], what="slow", timeout=0.5)
    assert str(err.value) == "slow did not finish in 0.5 s; stopped it"
    assert time.monotonic() - start < 10


def test_no_raise_mode_returns_the_exit_status() -> None:
    done = run(["sh", "-c", "echo out; echo err >&2; exit 4"], capture=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (4, b"out\n", b"err\n")


def test_a_child_can_be_given_only_its_own_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBAKE_TEST_STRAY", "1")
    inherited = run(["/usr/bin/env"], env={"ONLY": "this"}, capture=True).stdout.decode()
    assert "PIBAKE_TEST_STRAY=1\n" in inherited and "ONLY=this\n" in inherited
    sealed = run(["/usr/bin/env"], env={"ONLY": "this"}, inherit_env=False, capture=True)
    assert sealed.stdout == b"ONLY=this\n"


def test_lines_stream_as_they_come() -> None:
    seen: list[tuple[str, float]] = []
    start = time.monotonic()
    run(["sh", "-c", "echo one; sleep 1; echo two >&2"],
        on_line=lambda line: seen.append((line, time.monotonic() - start)))
    assert [line for line, _ in seen] == ["one", "two"]
    assert seen[0][1] < 0.9 <= seen[1][1]                 # "one" arrived before the sleep


def test_streamed_failure_keeps_the_telling_lines() -> None:
    with pytest.raises(BuildError) as err:
        run(["sh", "-c", "echo working; echo 'E: broken' >&2; exit 2"], what="apt",
            on_line=lambda line: None, timeout=30)
    assert str(err.value) == "apt failed (exit 2): E: broken"


def test_child_gets_sigint_at_default_even_when_pibake_ignores_it() -> None:
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        done = run(["sh", "-c", "grep SigIgn /proc/self/status"], capture=True)
    finally:
        signal.signal(signal.SIGINT, old)
    ignored = int(done.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1))
