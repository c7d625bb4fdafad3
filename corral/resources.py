"""Resource arithmetic: exact, validated, and cheap enough for the allocator.

Scalars (cpus, mem, disk, gpus) are kept as integer thousandths, as Mesos
keeps them with three decimal places, so that adding and subtracting many
small amounts never drifts. Ranges (ports) are kept as sorted, merged,
inclusive intervals. A `Resources` value is immutable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from corral.v1 import common_pb2

SCALAR_NAMES: Final = frozenset({"cpus", "mem", "disk", "gpus"})
RANGE_NAMES: Final = frozenset({"ports"})
KNOWN_NAMES: Final = SCALAR_NAMES | RANGE_NAMES

#: The largest scalar amount anyone may state: a billion cpus or MiB is no
#: machine; anything above is a mistake or an attack.
MAX_SCALAR: Final = 1e9
MAX_PORT: Final = 65535
_MILLI: Final = 1000

Interval = tuple[int, int]


class ResourceError(ValueError):
    """A resource description that is malformed, unknown or out of bounds."""


def _to_milli(name: str, amount: float) -> int:
    if not isinstance(amount, (int, float)) or isinstance(amount, bool):
        raise ResourceError(f"{name}: amount must be a number, got {amount!r}")
    if not math.isfinite(amount):
        raise ResourceError(f"{name}: amount must be finite, got {amount}")
    if amount < 0:
        raise ResourceError(f"{name}: amount must not be negative, got {amount}")
    if amount > MAX_SCALAR:
        raise ResourceError(f"{name}: amount {amount} exceeds the limit of {MAX_SCALAR:g}")
    return round(amount * _MILLI)


def _normalize(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sort and merge overlapping or adjacent inclusive intervals."""
    merged: list[list[int]] = []
    for begin, end in sorted(intervals):
        if merged and begin <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    return tuple((b, e) for b, e in merged)


def _subtract_intervals(left: tuple[Interval, ...], right: tuple[Interval, ...]) -> tuple[Interval, ...]:
    out: list[Interval] = []
    for begin, end in left:
        pieces = [(begin, end)]
        for rb, re_ in right:
            next_pieces: list[Interval] = []
            for pb, pe in pieces:
                if re_ < pb or rb > pe:
                    next_pieces.append((pb, pe))
                    continue
                if rb > pb:
                    next_pieces.append((pb, rb - 1))
                if re_ < pe:
                    next_pieces.append((re_ + 1, pe))
            pieces = next_pieces
        out.extend(pieces)
    return _normalize(out)


def _intervals_contain(outer: tuple[Interval, ...], inner: tuple[Interval, ...]) -> bool:
    return all(any(ob <= b and e <= oe for ob, oe in outer) for b, e in inner)


class Resources:
    """An immutable bag of named resources supporting +, -, <= and ==."""

    __slots__ = ("_ranges", "_scalars")

    def __init__(
        self,
        scalars: Mapping[str, int] | None = None,
        ranges: Mapping[str, tuple[Interval, ...]] | None = None,
        *,
        _trusted: bool = False,
    ) -> None:
        # Zero amounts and empty ranges are dropped so that equality is
        # structural. `scalars` is in thousandths.
        if _trusted:
            self._scalars: dict[str, int] = dict(scalars or {})
            self._ranges: dict[str, tuple[Interval, ...]] = dict(ranges or {})
            return
        self._scalars = {k: v for k, v in (scalars or {}).items() if v}
        self._ranges = {k: _normalize(v) for k, v in (ranges or {}).items() if v}

    # -- construction -----------------------------------------------------

    @classmethod
    def of(cls, ranges: Mapping[str, Iterable[Interval]] | None = None, **scalars: float) -> Resources:
        """Build from plain amounts, e.g. `Resources.of(cpus=1, mem=128)`."""
        milli = {}
        for name, amount in scalars.items():
            _check_name(name, scalar=True)
            milli[name] = _to_milli(name, amount)
        checked: dict[str, tuple[Interval, ...]] = {}
        for name, intervals in (ranges or {}).items():
            _check_name(name, scalar=False)
            checked[name] = _check_intervals(name, intervals)
        return cls(milli, checked)

    @classmethod
    def from_proto(cls, items: Iterable[common_pb2.Resource]) -> Resources:
        """Validate wire resources; raise ResourceError naming what is wrong."""
        scalars: dict[str, int] = {}
        ranges: dict[str, list[Interval]] = {}
        for item in items:
            name = item.name
            if name in SCALAR_NAMES:
                if item.ranges:
                    raise ResourceError(f"{name}: is a scalar resource and takes no ranges")
                scalars[name] = scalars.get(name, 0) + _to_milli(name, item.scalar)
                if scalars[name] > MAX_SCALAR * _MILLI:
                    raise ResourceError(f"{name}: amounts add up to more than the limit of {MAX_SCALAR:g}")
            elif name in RANGE_NAMES:
                if item.scalar:
                    raise ResourceError(f"{name}: is a range resource and takes no scalar amount")
                ranges.setdefault(name, []).extend(
                    _check_intervals(name, ((r.begin, r.end) for r in item.ranges))
                )
            else:
                raise ResourceError(_unknown(name))
        return cls(scalars, {k: tuple(v) for k, v in ranges.items()})

    @classmethod
    def parse(cls, text: str) -> Resources:
        """Parse the Mesos flag syntax: `cpus:4;mem:2048;ports:[31000-32000,8080-8080]`."""
        scalars: dict[str, int] = {}
        ranges: dict[str, tuple[Interval, ...]] = {}
        if text.strip() == "{}":  # how `str` writes nothing
            return cls()
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, sep, value = part.partition(":")
            name, value = name.strip(), value.strip()
            if not sep or not value:
                raise ResourceError(f"{part!r}: expected NAME:AMOUNT or NAME:[BEGIN-END,...]")
            if name in RANGE_NAMES:
                ranges[name] = _check_intervals(name, _parse_intervals(name, value))
            elif name in SCALAR_NAMES:
                try:
                    amount = float(value)
                except ValueError:
                    raise ResourceError(f"{name}: {value!r} is not a number") from None
                scalars[name] = _to_milli(name, amount)
            else:
                raise ResourceError(_unknown(name))
        return cls(scalars, ranges)

    # -- access -----------------------------------------------------------

    def scalar(self, name: str) -> float:
        return self._scalars.get(name, 0) / _MILLI

    def milli(self, name: str) -> int:
        return self._scalars.get(name, 0)

    def ranges(self, name: str) -> tuple[Interval, ...]:
        return self._ranges.get(name, ())

    def scalar_items(self) -> Iterator[tuple[str, int]]:
        """(name, thousandths) for every non-zero scalar."""
        return iter(self._scalars.items())

    def is_empty(self) -> bool:
        return not self._scalars and not self._ranges

    def __bool__(self) -> bool:
        return not self.is_empty()

    def to_proto(self) -> list[common_pb2.Resource]:
        out = [common_pb2.Resource(name=n, scalar=v / _MILLI) for n, v in sorted(self._scalars.items())]
        for name, intervals in sorted(self._ranges.items()):
            out.append(
                common_pb2.Resource(
                    name=name, ranges=[common_pb2.Range(begin=b, end=e) for b, e in intervals]
                )
            )
        return out

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly view: scalars as numbers, ranges as [[b, e], ...]."""
        out: dict[str, object] = {n: v / _MILLI for n, v in sorted(self._scalars.items())}
        for name, intervals in sorted(self._ranges.items()):
            out[name] = [list(i) for i in intervals]
        return out

    # -- arithmetic -------------------------------------------------------

    def __add__(self, other: Resources) -> Resources:
        scalars = dict(self._scalars)
        for name, amount in other._scalars.items():
            scalars[name] = scalars.get(name, 0) + amount
        ranges = dict(self._ranges)
        for name, intervals in other._ranges.items():
            ranges[name] = _normalize(ranges.get(name, ()) + intervals)
        return Resources(scalars, ranges, _trusted=True)

    def __sub__(self, other: Resources) -> Resources:
        """Subtract, flooring at zero; use `contains` first where that matters."""
        scalars = dict(self._scalars)
        for name, amount in other._scalars.items():
            left = scalars.get(name, 0) - amount
            if left > 0:
                scalars[name] = left
            else:
                scalars.pop(name, None)
        ranges = dict(self._ranges)
        for name, intervals in other._ranges.items():
            if name in ranges:
                rest = _subtract_intervals(ranges[name], intervals)
                if rest:
                    ranges[name] = rest
                else:
                    del ranges[name]
        return Resources(scalars, ranges, _trusted=True)

    def contains(self, other: Resources) -> bool:
        """True when every amount and range of `other` is within this."""
        for name, amount in other._scalars.items():
            if self._scalars.get(name, 0) < amount:
                return False
        for name, intervals in other._ranges.items():
            if not _intervals_contain(self._ranges.get(name, ()), intervals):
                return False
        return True

    def __le__(self, other: Resources) -> bool:
        return other.contains(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resources):
            return NotImplemented
        return self._scalars == other._scalars and self._ranges == other._ranges

    def __hash__(self) -> int:
        return hash((frozenset(self._scalars.items()), frozenset(self._ranges.items())))

    def __repr__(self) -> str:
        return f"Resources({self})"

    def __str__(self) -> str:
        parts = [f"{n}:{_format_milli(v)}" for n, v in sorted(self._scalars.items())]
        for name, intervals in sorted(self._ranges.items()):
            parts.append(f"{name}:[" + ",".join(f"{b}-{e}" for b, e in intervals) + "]")
        return ";".join(parts) or "{}"


EMPTY: Final = Resources()


def _format_milli(amount: int) -> str:
    """Exact decimal text for thousandths (`%g` would round 1048576 to 1.04858e+06)."""
    whole, frac = divmod(amount, _MILLI)
    return f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)


def _unknown(name: str) -> str:
    return f"unknown resource {name!r}; known resources are {', '.join(sorted(KNOWN_NAMES))}"


def _check_name(name: str, *, scalar: bool) -> None:
    if name not in (SCALAR_NAMES if scalar else RANGE_NAMES):
        raise ResourceError(_unknown(name))


def _check_intervals(name: str, intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    out = []
    for begin, end in intervals:
        if begin < 0:
            raise ResourceError(f"{name}: range {begin}-{end} starts below 0")
        if begin > end:
            raise ResourceError(f"{name}: range {begin}-{end} is empty (begin > end)")
        if end > MAX_PORT:
            raise ResourceError(f"{name}: range {begin}-{end} goes beyond {MAX_PORT}")
        out.append((int(begin), int(end)))
    return tuple(out)


_RANGE_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def _parse_intervals(name: str, text: str) -> list[Interval]:
    if not (text.startswith("[") and text.endswith("]")):
        raise ResourceError(f"{name}: expected ranges like [31000-32000], got {text!r}")
    out = []
    for piece in filter(None, (p.strip() for p in text[1:-1].split(","))):
        match = _RANGE_RE.match(piece)
        if not match:
            raise ResourceError(f"{name}: {piece!r} is not a range like 31000-32000")
        out.append((int(match.group(1)), int(match.group(2))))
    return out
