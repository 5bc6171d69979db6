"""Parsing of user-typed times and intervals."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from histdata.timeutil import format_interval, format_time, parse_interval, parse_time


class TestParseTime:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-01-01", datetime(2024, 1, 1, tzinfo=UTC)),
            ("2024-01-01T12:00:00Z", datetime(2024, 1, 1, 12, tzinfo=UTC)),
            ("2024-01-01T13:00:00+01:00", datetime(2024, 1, 1, 12, tzinfo=UTC)),
            ("1704067200", datetime(2024, 1, 1, tzinfo=UTC)),
            ("1704067200.5", datetime(2024, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)),
        ],
    )
    def test_accepted_forms(self, text: str, expected: datetime) -> None:
        """ISO 8601 dates and times and Unix seconds all parse to aware UTC."""
        assert parse_time(text) == expected

    @pytest.mark.parametrize("text", ["", "yesterday", "2024-13-01", "1e9"])
    def test_rejected_forms_quote_the_input(self, text: str) -> None:
        """Anything else raises ValueError mentioning the accepted forms."""
        with pytest.raises(ValueError, match="time"):
            parse_time(text)

    def test_format_is_iso_z(self) -> None:
        """Times are written as ISO 8601 UTC with a Z."""
        assert format_time(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00Z"


class TestParseInterval:
    @pytest.mark.parametrize(
        ("text", "minutes"),
        [
            ("1m", 1),
            ("15m", 15),
            ("1h", 60),
            ("4h", 240),
            ("1d", 1440),
            ("1w", 10080),
            ("60", 60),
            ("10080", 10080),
            ("3m", 3),
            ("2h", 120),
            ("3d", 4320),
        ],
    )
    def test_accepted(self, text: str, minutes: int) -> None:
        """Named intervals, Kraken minute numbers and whole-minute multiples are accepted."""
        assert parse_interval(text) == minutes

    @pytest.mark.parametrize("text", ["0m", "1s", "h", "-5m", "1.5h", "400d"])
    def test_rejected(self, text: str) -> None:
        """Zero, seconds, fractions and more than a year are refused."""
        with pytest.raises(ValueError, match="interval"):
            parse_interval(text)

    @pytest.mark.parametrize("text", ["1M", "5M", "1H", "1D", "1W", " 2 M "])
    def test_upper_case_units_are_refused_naming_m(self, text: str) -> None:
        """An upper-case unit (1M is a month in ccxt/freqtrade) is refused, saying minutes are m."""
        with pytest.raises(ValueError, match="minutes are 'm'"):
            parse_interval(text)

    @pytest.mark.parametrize("text", ["1mo", "1month", "1y"])
    def test_months_and_years_are_not_offered(self, text: str) -> None:
        """Months and years, which are no fixed number of minutes, are refused."""
        with pytest.raises(ValueError, match="interval"):
            parse_interval(text)

    def test_format_uses_largest_unit(self) -> None:
        """Minutes are written in the largest exact unit."""
        assert [format_interval(m) for m in (1, 90, 120, 1440, 10080)] == [
            "1m",
            "90m",
            "2h",
            "1d",
            "1w",
        ]
