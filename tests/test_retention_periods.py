"""Retention periods are bounded when the config file is read, and computing a date never spins.

A period too long for a date to represent (``period = "8000y"``) used to parse, then hang the
worker (or a retention job) in ``Period.after`` at the first call it dated. Every test that could
hang runs under ``no_hang``: SIGALRM fails it instead of hanging CI.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import pytest

from archiver.archive import archive_calls
from archiver.config import load_settings
from archiver.errors import ConfigError
from archiver.retention.policy import MAX_PERIOD_YEARS, Period, parse_period, parse_policy
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env

START = datetime(2024, 1, 31, 10, 0, tzinfo=UTC)
LIMIT_SECONDS = 10


@contextmanager
def no_hang(seconds: int = LIMIT_SECONDS) -> Iterator[None]:
    """Fail the test if the block runs longer than ``seconds`` (a pure-Python loop that spins is
    interrupted by the signal: the handler runs between two bytecodes)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        pytest.fail(f"did not return within {seconds} s: something spins", pytrace=False)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def config_with(period: str, lock: str = "none") -> str:
    return f"""
[retention]
default = "general"

[retention.classes.general]
period = {period}
lock = "{lock}"
at_end = "delete"
"""


@pytest.mark.parametrize(
    "value",
    [
        "8000y",
        "1001y",
        "999y24mo",  # units combined: 1001 years
        "12001mo",
        "1000y1s",
        "365243d",  # 1000 Gregorian years are 365242.5 days
        "52178w",
        "9000000h",
        10**12,  # a bare number of days (timedelta alone would raise OverflowError)
        366_000,
        "99999999999999999999d",
        "0000000000000000000099999999999999999999s",
        "9" * 5000 + "d",  # more digits than int() converts by default
    ],
)
def test_a_period_longer_than_the_bound_is_refused_when_read(value: object) -> None:
    with no_hang(), pytest.raises(ConfigError) as info:
        parse_period(value, "archiver.toml: [retention.classes.general]")
    message = str(info.value)
    assert message.startswith("archiver.toml: [retention.classes.general]: ")
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:20]
    assert shown in message  # the value as written (long ones cut short)
    assert f"{MAX_PERIOD_YEARS} years" in message  # the limit
    assert 'at_end = "keep"' in message  # and the fix, for "keep them for good"
    assert len(message) < 600


def test_an_integer_too_big_to_print_is_refused_too() -> None:
    """TOML integers are 64-bit, but a caller of parse_period may pass any int (and repr() of
    one of 5000 digits raises)."""
    with no_hang(), pytest.raises(ConfigError, match="1000 years"):
        parse_period(10**5000, "x")


def test_the_bound_is_a_thousand_years_and_periods_up_to_it_work() -> None:
    assert MAX_PERIOD_YEARS == 1000
    with no_hang():
        for value, expected in [
            ("1000y", datetime(3024, 1, 31, 10, 0, tzinfo=UTC)),
            ("999y12mo", datetime(3024, 1, 31, 10, 0, tzinfo=UTC)),
            ("12000mo", datetime(3024, 1, 31, 10, 0, tzinfo=UTC)),
            ("1001mo", datetime(2107, 6, 30, 10, 0, tzinfo=UTC)),  # 31st → the month's last day
            (365_242, START + timedelta(days=365_242)),
            ("365242d", START + timedelta(days=365_242)),
            ("999y364d", datetime(3024, 1, 30, 10, 0, tzinfo=UTC)),
        ]:
            assert parse_period(value, "x").after(START) == expected, value


@pytest.mark.parametrize("value", [0, "0d", "0y", "0s", "0mo0d"])
def test_a_period_of_zero_means_at_once(value: object) -> None:
    """Legitimate: deletable as soon as the rules allow (``at_end = "delete"``)."""
    assert parse_period(value, "x").after(START) == START


def test_calendar_arithmetic_takes_the_last_day_of_a_shorter_month() -> None:
    leap_day = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    assert parse_period("1y", "x").after(leap_day) == datetime(2025, 2, 28, 23, 59, 59, tzinfo=UTC)
    assert parse_period("4y", "x").after(leap_day) == datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC)
    assert parse_period("1mo", "x").after(START) == datetime(2024, 2, 29, 10, 0, tzinfo=UTC)
    assert parse_period("3mo", "x").after(START) == datetime(2024, 4, 30, 10, 0, tzinfo=UTC)
    assert parse_period("11mo", "x").after(START) == datetime(2024, 12, 31, 10, 0, tzinfo=UTC)
    assert parse_period("13mo", "x").after(START) == datetime(2025, 2, 28, 10, 0, tzinfo=UTC)
    ist = datetime.fromisoformat("2026-03-31 02:00:00+05:30")  # 30 March in UTC
    assert parse_period("1mo", "x").after(ist) == datetime(2026, 4, 30, 20, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "value, why",
    [
        ("-5d", "negative"),
        (-5, "negative"),
        ("5d-1d", "negative"),
        ("", "not understood"),
        ("5", "not understood"),  # a bare number is days only as a TOML integer
        ("5m", "not understood"),  # minutes or months? neither
        ("5 parsecs", "not understood"),
        ("d", "not understood"),
        ("1.5y", "not understood"),
        ("\u0665d", "not understood"),  # ARABIC-INDIC DIGIT FIVE: only ASCII digits count
        ("\uff15d", "not understood"),  # FULLWIDTH DIGIT FIVE
        (True, "not understood"),
        (1.5, "not understood"),
        (None, "not understood"),
        ([5], "not understood"),
    ],
)
def test_odd_periods_are_refused_with_the_reason(value: object, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        parse_period(value, "archiver.toml: [retention.classes.general]")
    assert str(info.value).startswith("archiver.toml: [retention.classes.general]: period ")


def test_a_policy_with_a_huge_period_is_refused_naming_file_and_class() -> None:
    table = {
        "default": "general",
        "classes": {
            "general": {"period": "5y"},
            "forever": {"period": "8000y", "lock": "compliance", "at_end": "keep"},
        },
    }
    with no_hang(), pytest.raises(ConfigError) as info:
        parse_policy(table, "/etc/exotel-archiver/archiver.toml")
    message = str(info.value)
    assert "/etc/exotel-archiver/archiver.toml: [retention.classes.forever]" in message
    assert "'8000y'" in message and "1000 years" in message


@pytest.mark.parametrize(
    "period, start",
    [
        (Period(months=12 * 8000), START),  # built directly, past the parse bound
        (Period(months=-12 * 3000), START),
        (Period(exact=timedelta(days=999_999_999)), START),
        (Period(months=1), datetime(9999, 12, 15, tzinfo=UTC)),  # a start near the end of time
        (Period(exact=timedelta(days=30)), datetime(9999, 12, 15, tzinfo=UTC)),
    ],
)
def test_a_date_past_the_representable_range_is_an_error_not_a_hang(
    period: Period, start: datetime
) -> None:
    with no_hang(), pytest.raises(ConfigError, match="representable"):
        period.after(start)


def test_the_cli_refuses_a_huge_period_with_exit_code_2_and_no_traceback(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A class lengthened to 8000 years after calls were archived with it: ``retention plan``
    used to date the archived objects by it, and spin for ever."""
    import asyncio

    from click.testing import CliRunner

    from archiver.cli import main

    config = tmp_path / "archiver.toml"
    config.write_text(config_with('"30d"'))
    env = {
        **exotel_env(sim, server.base_url, str(tmp_path / "dest"), tmp_path / "state"),
        "ARCHIVER_CONFIG": str(config),
    }
    call = sim.add_call(recordings=1, size=3000)
    report = asyncio.run(archive_calls(load_settings(env=env), [call.sid]))
    assert [r.outcome for r in report.results] == ["archived"]
    runner = CliRunner()
    with no_hang():
        assert runner.invoke(main, ["retention", "plan"], env=env).exit_code == 0

    config.write_text(config_with('"8000y"'))
    with no_hang():
        planned = runner.invoke(main, ["retention", "plan"], env=env)
    assert planned.exit_code == 2, planned.output
    assert "Traceback" not in planned.output and isinstance(planned.exception, SystemExit)
    assert f"error: {config}: [retention.classes.general]: period '8000y'" in planned.output
    assert "1000 years" in planned.output

    config.write_text(config_with(str(10**12)))  # a bare number of days
    with no_hang():
        archived = runner.invoke(main, ["archive", call.sid], env=env)
    assert archived.exit_code == 2, archived.output
    assert "period 1000000000000 " in archived.output and "1000 years" in archived.output
    assert "Traceback" not in archived.output
