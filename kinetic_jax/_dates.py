"""Time for the liquidation horizon (SPEC-horizon.md §6.1): ISO dates, years.

Times are years, ACT/365F: T = (date - as_of) / 365 calendar days. A book gives a
date either as an ISO ``YYYY-MM-DD`` string (TOML may also give a bare date) or
as its ``_in`` twin in years; the horizon is ``model.horizon_days`` calendar days.
"""

from __future__ import annotations

import datetime
import re

from ._checks import check_number
from ._errors import BookError

DAYS_PER_YEAR = 365.0
MAX_HORIZON_DAYS = 365.0
MAX_YEARS = 100.0  # resolves_in, expiry_in
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}")


def iso_date(field: str, value: object) -> datetime.date:
    """`value` (an ISO ``YYYY-MM-DD`` string or a date) as a date."""
    if isinstance(value, datetime.datetime):
        raise BookError(field, f"{value.isoformat()!r} is a date-time, not a date (YYYY-MM-DD)")
    if isinstance(value, datetime.date):
        return value
    if not isinstance(value, str) or not _ISO.fullmatch(value):
        raise BookError(field, f"{value!r} is not an ISO date (YYYY-MM-DD)")
    try:
        return datetime.date.fromisoformat(value)
    except ValueError as e:
        raise BookError(field, f"{value!r} is not a calendar date ({e})") from None


def date_text(value: object) -> str | None:
    """A validated date as its ISO text (None stays None)."""
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime.date) else str(value)


def years_between(as_of: datetime.date, date: datetime.date) -> float:
    """ACT/365F year fraction from `as_of` to `date`."""
    return (date - as_of).days / DAYS_PER_YEAR


def check_horizon_days(value: object) -> float:
    """``model.horizon_days``: finite, in (0, 365]."""
    return check_number("model.horizon_days", value, low=0, high=MAX_HORIZON_DAYS,
                        low_open=True)


def time_to(field: str, date: object, years: object, as_of: datetime.date | None,
            key: str) -> float | None:
    """The time in years of a date given as `key` (a date) or ``key_in`` (years):
    None when neither is given. Errors name the field: both given, a date without
    ``model.as_of``, a date on or before ``as_of``, a non-positive ``_in``."""
    if date is not None and years is not None:
        raise BookError(f"{field}.{key}", f"{date_text(date)!r} given together with "
                                          f"{key}_in = {years!r}: give one of them")
    if years is not None:
        return check_number(f"{field}.{key}_in", years, low=0, low_open=True, high=MAX_YEARS)
    if date is None:
        return None
    day = iso_date(f"{field}.{key}", date)
    if as_of is None:
        raise BookError(f"{field}.{key}", f"{day.isoformat()!r} is a date, but model.as_of "
                                          f"is not given (dates count from it)")
    if day <= as_of:
        raise BookError(f"{field}.{key}", f"{day.isoformat()!r} is on or before model.as_of "
                                          f"{as_of.isoformat()!r} (settled contracts are not "
                                          f"margined)")
    return years_between(as_of, day)
