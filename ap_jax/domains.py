"""What values a config field accepts: its type, finiteness, range or choices, and what it needs.

Every ``RunConfig`` field names one domain next to its definition (``ap_jax.config``), and one
validator checks them all, so every entry point (flags, ``--set FIELD=VALUE``, a stored
``config.json``) rejects the same values with the same one-line message. A domain's
:meth:`problem` says what is wrong with a value in words that follow the field's name
(``"must be in [0, 1), got 1.0"``), or returns None when the value is fine.

Numbers are finite: NaN and infinities are never a setting. Integer fields have an upper bound
too, so a huge value is refused up front instead of overflowing a counter mid-run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

INT32_MAX = 2**31 - 1  # step counters and example indices on the device are int32


def _plain(value: float) -> str:
    """A bound as a reader writes it: ``1`` not ``1.0``, ``2147483647`` not ``2.1e9``."""
    return str(int(value)) if float(value).is_integer() else str(value)


def shown(value: Any) -> str:
    """``value`` for a message: a huge integer by its digit count, not hundreds of digits."""
    text = str(value)
    return f"{text[:12]}... ({len(text)} digits)" if isinstance(value, int) and len(text) > 24 else text


@dataclasses.dataclass(frozen=True)
class Number:
    """An int or a finite float in ``[low, high]`` (each end open or closed); with ``zero`` set,
    0 is also accepted and means what ``zero`` says (e.g. ``"all"``)."""

    kind: type  # int or float
    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    zero: str | None = None

    def coerce(self, value: Any) -> Any:
        """An int given for a float field as that float (``1`` and ``1.0`` are one setting)."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
            return float(value)
        return value

    def has_type(self, value: Any) -> bool:
        return isinstance(value, self.kind) and not isinstance(value, bool)

    def problem(self, value: Any) -> str | None:
        if not self.has_type(value):
            return f"must be {'an integer' if self.kind is int else 'a number'}, got {value!r}"
        if self.kind is float and not math.isfinite(value):
            return f"must be finite, got {value}"
        if self.zero is not None and value == 0:
            return None
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        if above and below:
            return None
        return f"{self.requirement(above)}, got {shown(value)}"

    def describe(self) -> str:
        """The accepted values in words, for ``--help``."""
        left, right = "(" if self.low_open else "[", ")" if self.high_open or not math.isfinite(self.high) else "]"
        kind = "an integer" if self.kind is int else "a number"
        span = f"{kind} in {left}{_plain(self.low)}, {_plain(self.high) if math.isfinite(self.high) else 'inf'}{right}"
        return f"0 ({self.zero}) or {span}" if self.zero is not None else span

    def requirement(self, above: bool = False) -> str:
        """What the field must be: for a float range the interval, else the bound it broke."""
        if self.kind is float and math.isfinite(self.high):
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"must be in {left}{_plain(self.low)}, {_plain(self.high)}{right}"
        if above:
            return f"must be {'below' if self.high_open else 'at most'} {_plain(self.high)}"
        if self.low_open and self.low == 0:
            low = "positive"
        elif self.kind is int:
            low = f"at least {_plain(self.low)}"
        else:
            low = f">= {_plain(self.low)}"
        return f"must be 0 ({self.zero}) or {low}" if self.zero is not None else f"must be {low}"


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of a fixed set of names."""

    options: tuple[str, ...]

    def coerce(self, value: Any) -> Any:
        return value

    def describe(self) -> str:
        return "one of the choices"

    def has_type(self, value: Any) -> bool:
        return isinstance(value, str)

    def problem(self, value: Any) -> str | None:
        if not self.has_type(value):
            return f"must be a name, one of {', '.join(self.options)}, got {value!r}"
        if value in self.options:
            return None
        return f"must be one of {', '.join(self.options)}, got {value!r}"


@dataclasses.dataclass(frozen=True)
class Flag:
    """True or false."""

    def coerce(self, value: Any) -> Any:
        return value

    def describe(self) -> str:
        return "true or false"

    def has_type(self, value: Any) -> bool:
        return isinstance(value, bool)

    def problem(self, value: Any) -> str | None:
        return None if self.has_type(value) else f"must be true or false, got {value!r}"


@dataclasses.dataclass(frozen=True)
class Shares:
    """A tuple of floats, each strictly between 0 and 1 (shares of a cycle's steps)."""

    def coerce(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
        return value

    def describe(self) -> str:
        return "numbers in (0, 1)"

    def has_type(self, value: Any) -> bool:
        return isinstance(value, tuple) and all(isinstance(v, float) for v in value)

    def problem(self, value: Any) -> str | None:
        if self.has_type(value) and all(0 < v < 1 for v in value):
            return None
        shown = list(value) if isinstance(value, tuple) else value
        return f"must lie in (0, 1), got {shown}"


Domain = Number | Choice | Flag | Shares


@dataclasses.dataclass(frozen=True)
class Needs:
    """A condition on other fields that a field's value needs; ``message`` is a ``str.format``
    template over the config's fields (``"--ap-rate ({ap_rate}) must not exceed --rate ({rate})"``)."""

    holds: Callable[[Any], bool]
    message: str


def integer(low: int, high: int = INT32_MAX, zero: str | None = None) -> Number:
    """An int in ``[low, high]`` (and 0 when ``zero`` says what 0 means)."""
    return Number(int, low, high, zero=zero)


def real(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Number:
    """A finite float in the interval from ``low`` to ``high``."""
    return Number(float, low, high, low_open, high_open)
