"""Resource arithmetic and validation (corral/resources.py).

The property tests check `Resources` against a plain model: scalars as integer
thousandths, ports as a set of port numbers.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, strategies as st

from corral.resources import EMPTY, MAX_PORT, SCALAR_NAMES, ResourceError, Resources
from corral.v1 import common_pb2

SCALARS = sorted(SCALAR_NAMES)


def ports_of(r: Resources) -> set[int]:
    return {p for begin, end in r.ranges("ports") for p in range(begin, end + 1)}


def model(r: Resources) -> tuple[dict[str, int], set[int]]:
    return {n: r.milli(n) for n in SCALARS}, ports_of(r)


# Ranges may overlap or touch: Resources must merge them.
intervals = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 25)).map(lambda t: (t[0], t[0] + t[1])), max_size=6
)


@st.composite
def resources(draw: st.DrawFn, max_milli: int = 10**12) -> Resources:
    scalars = draw(st.dictionaries(st.sampled_from(SCALARS), st.integers(0, max_milli)))
    return Resources(scalars, {"ports": tuple(draw(intervals))})


# -- parsing and formatting ----------------------------------------------------


def test_parse_mesos_flag_syntax() -> None:
    r = Resources.parse(" cpus:4; mem:2048.5 ;ports:[8080-8080, 31000-32000,31500-32001];")
    assert r.scalar("cpus") == 4
    assert r.milli("mem") == 2_048_500
    assert r.ranges("ports") == ((8080, 8080), (31000, 32001))
    assert r.scalar("disk") == 0


def test_format_is_exact_and_sorted() -> None:
    r = Resources.of(mem=1048576, cpus=0.5, disk=123456.789, ranges={"ports": [(9, 10), (1, 2), (3, 3)]})
    # `%g` would have printed mem as 1.04858e+06 and disk as 123457.
    assert str(r) == "cpus:0.5;disk:123456.789;mem:1048576;ports:[1-3,9-10]"
    assert str(EMPTY) == "{}"
    assert Resources.parse("{}") == EMPTY


@given(resources())
def test_format_then_parse_round_trips(r: Resources) -> None:
    assert Resources.parse(str(r)) == r


@given(resources(max_milli=10**12))
def test_proto_round_trips(r: Resources) -> None:
    assert Resources.from_proto(r.to_proto()) == r


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("cpus", "expected NAME:AMOUNT"),
        ("cpus:", "expected NAME:AMOUNT"),
        ("bogus:1", "unknown resource 'bogus'"),
        ("cpus:many", "not a number"),
        ("cpus:nan", "finite"),
        ("cpus:inf", "finite"),
        ("mem:-1", "negative"),
        ("mem:1000000001", "exceeds the limit"),
        ("ports:31000-32000", "expected ranges"),
        ("ports:[31000]", "not a range"),
        ("ports:[32000-31000]", "begin > end"),
        ("ports:[65000-65536]", "beyond 65535"),
    ],
)
def test_parse_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ResourceError, match=fragment):
        Resources.parse(text)


def test_of_validates_like_the_wire() -> None:
    assert Resources.of(cpus=1e9).scalar("cpus") == 1e9
    with pytest.raises(ResourceError, match="unknown"):
        Resources.of(ports=1)
    with pytest.raises(ResourceError, match="unknown"):
        Resources.of(ranges={"cpus": [(1, 2)]})
    with pytest.raises(ResourceError, match="below 0"):
        Resources.of(ranges={"ports": [(-5, 3)]})
    with pytest.raises(ResourceError, match="number"):
        Resources.of(cpus=True)


# -- wire validation -------------------------------------------------------------


def scalar(name: str, amount: float) -> common_pb2.Resource:
    return common_pb2.Resource(name=name, scalar=amount)


def ports(*pairs: tuple[int, int]) -> common_pb2.Resource:
    return common_pb2.Resource(name="ports", ranges=[common_pb2.Range(begin=b, end=e) for b, e in pairs])


def test_from_proto_accepts_and_sums() -> None:
    r = Resources.from_proto([scalar("cpus", 1.5), scalar("cpus", 0.5), ports((10, 20)), ports((21, 30))])
    assert r == Resources.of(cpus=2, ranges={"ports": [(10, 30)]})
    assert Resources.from_proto([ports((0, MAX_PORT))]).ranges("ports") == ((0, MAX_PORT),)


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        ([scalar("bogus", 1)], "unknown resource 'bogus'"),
        ([scalar("cpus", math.nan)], "finite"),
        ([scalar("mem", math.inf)], "finite"),
        ([scalar("mem", -math.inf)], "finite"),
        ([scalar("disk", -0.5)], "negative"),
        ([scalar("gpus", 1e9 + 1)], "exceeds the limit"),
        ([scalar("cpus", 6e8), scalar("cpus", 6e8)], "add up to more than the limit"),
        ([ports((20, 10))], "begin > end"),
        ([ports((65000, MAX_PORT + 1))], "beyond 65535"),
        ([common_pb2.Resource(name="cpus", scalar=1, ranges=[common_pb2.Range(end=2)])], "no ranges"),
        ([common_pb2.Resource(name="ports", scalar=1)], "no scalar"),
    ],
)
def test_from_proto_rejects(items: list[common_pb2.Resource], fragment: str) -> None:
    with pytest.raises(ResourceError, match=fragment):
        Resources.from_proto(items)


# -- arithmetic ------------------------------------------------------------------


def test_arithmetic_examples() -> None:
    a = Resources.of(cpus=2, mem=1024, ranges={"ports": [(1, 10)]})
    b = Resources.of(cpus=0.5, ranges={"ports": [(3, 4)]})
    assert a - b == Resources.of(cpus=1.5, mem=1024, ranges={"ports": [(1, 2), (5, 10)]})
    assert (a - b) + b == a
    # Subtraction floors at zero and drops what is gone.
    assert b - a == EMPTY
    assert not (b - a)
    assert Resources.of(cpus=0) == EMPTY


def test_contains() -> None:
    a = Resources.of(cpus=2, ranges={"ports": [(1, 5), (6, 10)]})
    assert a.contains(Resources.of(cpus=2, ranges={"ports": [(4, 7)]}))  # across merged ranges
    assert not a.contains(Resources.of(cpus=2.001))
    assert not a.contains(Resources.of(mem=1))
    assert not a.contains(Resources.of(ranges={"ports": [(10, 11)]}))
    assert a.contains(EMPTY)
    assert Resources.of(cpus=1, ranges={"ports": [(2, 3)]}) <= a
    assert not a <= EMPTY


@given(resources(), resources())
def test_add_is_union_and_sum(a: Resources, b: Resources) -> None:
    (sa, pa), (sb, pb) = model(a), model(b)
    assert model(a + b) == ({n: sa[n] + sb[n] for n in SCALARS}, pa | pb)
    assert a + b == b + a


@given(resources(), resources(), resources())
def test_add_is_associative(a: Resources, b: Resources, c: Resources) -> None:
    assert (a + b) + c == a + (b + c)


@given(resources(), resources())
def test_subtract_is_floored_difference(a: Resources, b: Resources) -> None:
    (sa, pa), (sb, pb) = model(a), model(b)
    assert model(a - b) == ({n: max(0, sa[n] - sb[n]) for n in SCALARS}, pa - pb)


@given(resources(), resources())
def test_contains_matches_model(a: Resources, b: Resources) -> None:
    (sa, pa), (sb, pb) = model(a), model(b)
    expected = all(sa[n] >= sb[n] for n in SCALARS) and pb <= pa
    assert a.contains(b) == expected
    assert (b <= a) == expected
    assert (a + b).contains(a)
    assert a.contains(a - b)


@given(resources(), resources())
def test_subtract_then_add_back(a: Resources, b: Resources) -> None:
    part = a - (a - b)  # the part of b that a holds
    assert a.contains(part)
    assert (a - part) + part == a
    # With ranges made disjoint from a, adding then subtracting is exact.
    disjoint = b - Resources(ranges={"ports": a.ranges("ports")})
    assert (a + disjoint) - disjoint == a


@given(resources(), resources())
def test_equality_is_structural(a: Resources, b: Resources) -> None:
    assert (a == b) == (model(a) == model(b))
    if a == b:
        assert hash(a) == hash(b)
    merged = a.ranges("ports")
    assert all(e1 + 1 < b2 for (_, e1), (b2, _) in itertools.pairwise(merged))
