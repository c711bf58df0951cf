"""builder.run: one-line errors from failed commands."""

from __future__ import annotations

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
