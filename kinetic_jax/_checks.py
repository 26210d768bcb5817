"""Value checks shared by every validator: one wording for every field."""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from ._errors import BookError

# Integers longer than this are refused by digit count, never converted or
# printed (a float64 holds at most ~309 integer digits; Python refuses to convert
# more than 4,300 between text and int).
MAX_INT_DIGITS = 300
_LONG = 10**MAX_INT_DIGITS


def decimal_digits(n: int) -> int:
    """The number of decimal digits of ``abs(n)``, without converting it to text."""
    n = abs(n)
    if n < 10**18:
        return len(str(n))
    d = int(n.bit_length() * math.log10(2)) + 1  # within one of the answer
    while 10 ** (d - 1) > n:
        d -= 1
    while 10**d <= n:
        d += 1
    return d


class LongInteger:
    """An integer of more than MAX_INT_DIGITS digits, kept by its digit count
    only (a decoded literal is never converted): the validators name its field."""

    def __init__(self, digits: int):
        self.digits = digits

    @classmethod
    def of_text(cls, literal: str) -> LongInteger:
        return cls(len(literal.lstrip("+-").replace("_", "")))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits:,} digits>"

    def __eq__(self, other) -> bool:
        return isinstance(other, LongInteger) and other.digits == self.digits

    def __hash__(self) -> int:
        return hash((LongInteger, self.digits))


def is_long(value: object) -> bool:
    """A LongInteger, or a Python int of more than MAX_INT_DIGITS digits."""
    return isinstance(value, LongInteger) or (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _LONG)


def long_integers(data):
    """Decoded `data` (dicts, lists, scalars) with every int of more than
    MAX_INT_DIGITS digits as a LongInteger (`data` itself when it holds none):
    a message that shows such an int would need its text, which Python refuses
    over 4,300 digits."""
    if isinstance(data, dict):
        out = {k: long_integers(v) for k, v in data.items()}
        return data if all(out[k] is data[k] for k in data) else out
    if isinstance(data, (list, tuple)):
        out = [long_integers(v) for v in data]
        same = all(a is b for a, b in zip(out, data, strict=True))
        return data if same else type(data)(out)
    if is_long(data) and not isinstance(data, LongInteger):
        return LongInteger(decimal_digits(data))
    return data


def check_size(field: str, value: object) -> None:
    """Raises BookError if `value` is an integer of more than MAX_INT_DIGITS digits."""
    if is_long(value):
        digits = value.digits if isinstance(value, LongInteger) else decimal_digits(value)
        raise BookError(field, f"an integer of {digits:,} digits is out of range (at most "
                               f"{MAX_INT_DIGITS} digits)")


def is_number(value: object) -> bool:
    """A real number: Python's int and float, and numpy's integer and floating
    scalars (``numbers.Real``); not a bool (Python's or numpy's)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def plain(value: object) -> object:
    """A numpy scalar as Python's (``np.int64(5)`` -> ``5``, as a book built from
    a DataFrame holds), an int of more than MAX_INT_DIGITS digits as a
    [`LongInteger`][] (which every check refuses, naming the field), anything
    else as it is."""
    if isinstance(value, np.generic):
        return value.item()
    return long_integers(value)


def plain_fields(obj):
    """The dataclass `obj` with each numpy-scalar field as Python's ([`plain`][]):
    a copy if any changes, so the user's object is never altered."""
    changes = {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
               if isinstance(getattr(obj, f.name), np.generic) or is_long(getattr(obj, f.name))}
    return dataclasses.replace(obj, **changes) if changes else obj


def check_number(field: str, value: object, *, low=None, high=None, low_open=False,
                 high_open=False) -> float:
    """Checks that `value` is a finite real in the given interval; returns it as float."""
    check_size(field, value)
    if not is_number(value):
        raise BookError(field, f"{value!r} is not a number")
    value = float(value)  # type: ignore[arg-type]  (check_size: it fits a float)
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
