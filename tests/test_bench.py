"""make bench's report of the cold base time per suite/arch."""

from __future__ import annotations

from builder.bench import BaseTime, base_lines


def test_one_line_per_arch_with_its_cold_time() -> None:
    lines = base_lines([BaseTime("trixie/arm64", 201.04, True),
                        BaseTime("trixie/arm64", 0.2, False),
                        BaseTime("trixie/armhf", 250.0, True)])
    assert lines == [
        "bench: cold base trixie/arm64 (bootstrap with kernel):   201.0 s",
        "bench: cold base trixie/armhf (bootstrap with kernel):   250.0 s",
    ]


def test_a_cached_base_is_named_not_timed() -> None:
    assert base_lines([BaseTime("trixie/armhf", 0.3, False)]) == [
        "bench: base trixie/armhf: cached, not measured (empty the cache to measure it)"]


def test_a_later_cold_build_replaces_a_cached_one() -> None:
    lines = base_lines([BaseTime("bookworm/armhf", 0.3, False),
                        BaseTime("bookworm/armhf", 180.0, True)])
    assert lines == ["bench: cold base bookworm/armhf (bootstrap with kernel):   180.0 s"]
