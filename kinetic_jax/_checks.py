"""Value checks shared by every validator: one wording for every field."""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from ._errors import BookError


def is_number(value: object) -> bool:
    """A real number: Python's int and float, and numpy's integer and floating
    scalars (``numbers.Real``); not a bool (Python's or numpy's)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def plain(value: object) -> object:
    """A numpy scalar as Python's (``np.int64(5)`` -> ``5``, as a book built from
    a DataFrame holds), anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def plain_fields(obj):
    """The dataclass `obj` with each numpy-scalar field as Python's ([`plain`][]):
    a copy if any changes, so the user's object is never altered."""
    changes = {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
               if isinstance(getattr(obj, f.name), np.generic)}
    return dataclasses.replace(obj, **changes) if changes else obj


def check_number(field: str, value: object, *, low=None, high=None, low_open=False,
                 high_open=False) -> float:
    """Checks that `value` is a finite real in the given interval; returns it as float."""
    if not is_number(value):
        raise BookError(field, f"{value!r} is not a number")
    try:
        value = float(value)  # type: ignore[arg-type]
    except OverflowError:
        raise BookError(field, f"an integer of {len(str(abs(value))):,} digits is out "
                               f"of range") from None
    if not math.isfinite(value):
        raise BookError(field, f"{value!r} is not finite")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        interval = f"{left}{lo}, {hi}{right}"
        raise BookError(field, f"{value!r} is outside {interval}")
    return value
