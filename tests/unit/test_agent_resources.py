"""The agent's view of its host: Mesos-like resource detection, overrides, attributes."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from agent.resources import (
    GIB,
    MIB,
    InvalidAttributes,
    apply_overrides,
    default_resources,
    detect,
    host_resources,
    parse_attributes,
)
from corral.resources import ResourceError, Resources


@pytest.mark.parametrize(
    ("mem_bytes", "expected_mib"),
    [
        (24 * GIB, 23 * 1024),  # all but 1 GiB
        (2 * GIB, 1024),  # the boundary: still all but 1 GiB
        (2 * GIB - MIB, 1023.5),  # below 2 GiB: half
        (512 * MIB, 256),
    ],
)
def test_memory_keeps_one_gib_for_the_host_or_half_on_small_hosts(
    mem_bytes: int, expected_mib: float
) -> None:
    resources = default_resources(cpus=2, mem_bytes=mem_bytes, disk_bytes=100 * GIB)
    assert resources.scalar("mem") == int(expected_mib)


@pytest.mark.parametrize(
    ("disk_bytes", "expected_mib"),
    [
        (100 * GIB, 95 * 1024),  # all but 5 GiB
        (10 * GIB, 5 * 1024),  # the boundary
        (8 * GIB, 4 * 1024),  # below 10 GiB: half
    ],
)
def test_disk_keeps_five_gib_or_half_on_small_disks(disk_bytes: int, expected_mib: int) -> None:
    resources = default_resources(cpus=2, mem_bytes=4 * GIB, disk_bytes=disk_bytes)
    assert resources.scalar("disk") == expected_mib


def test_cpus_and_default_ports() -> None:
    resources = default_resources(cpus=8, mem_bytes=4 * GIB, disk_bytes=100 * GIB)
    assert resources.scalar("cpus") == 8
    assert resources.ranges("ports") == ((31000, 32000),)


def test_a_host_reporting_no_cpus_still_offers_one() -> None:
    assert default_resources(cpus=0, mem_bytes=4 * GIB, disk_bytes=100 * GIB).scalar("cpus") == 1


def test_detect_measures_this_host(tmp_path: Path) -> None:
    resources = detect(tmp_path / "not" / "created" / "yet")
    assert resources.scalar("cpus") == psutil.cpu_count(logical=True)
    assert resources.scalar("mem") > 0
    assert resources.scalar("disk") > 0
    assert resources.ranges("ports") == ((31000, 32000),)


def test_overrides_replace_only_the_resources_they_name() -> None:
    detected = Resources.of(ranges={"ports": [(31000, 32000)]}, cpus=8, mem=16000, disk=90000)
    result = apply_overrides(detected, "cpus:2.5;ports:[8000-8099,9000-9000]")
    assert result == Resources.of(
        ranges={"ports": [(8000, 8099), (9000, 9000)]}, cpus=2.5, mem=16000, disk=90000
    )


def test_an_override_of_zero_removes_the_resource() -> None:
    detected = Resources.of(cpus=8, mem=16000, disk=90000)
    assert apply_overrides(detected, "disk:0") == Resources.of(cpus=8, mem=16000)


def test_overrides_may_add_a_resource_detection_does_not_find() -> None:
    detected = Resources.of(cpus=8)
    assert apply_overrides(detected, "gpus:2") == Resources.of(cpus=8, gpus=2)


def test_no_overrides_keep_what_was_detected() -> None:
    detected = Resources.of(ranges={"ports": [(31000, 32000)]}, cpus=8, mem=16000)
    assert apply_overrides(detected, "") == detected


def test_host_resources_combines_detection_and_overrides(tmp_path: Path) -> None:
    resources = host_resources(tmp_path, "cpus:3;mem:100")
    assert resources.scalar("cpus") == 3
    assert resources.scalar("mem") == 100
    assert resources.scalar("disk") > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpus:many", "cpus: 'many' is not a number"),
        ("cpus:-1", "must not be negative"),
        ("cpus:nan", "must be finite"),
        ("bogus:1", "unknown resource 'bogus'"),
        ("ports:31000-32000", "expected ranges like"),
        ("mem", "expected NAME:AMOUNT"),
    ],
)
def test_malformed_overrides_are_refused_precisely(text: str, message: str) -> None:
    with pytest.raises(ResourceError, match=message):
        apply_overrides(Resources.of(cpus=1), text)


def test_attributes_parse_in_order() -> None:
    attributes = parse_attributes(" rack:r1 ; zone:eu-west.a;keys:[1000-1500];set:{a,b};")
    assert [(a.name, a.text) for a in attributes] == [
        ("rack", "r1"),
        ("zone", "eu-west.a"),
        ("keys", "[1000-1500]"),
        ("set", "{a,b}"),
    ]


def test_no_attributes() -> None:
    assert parse_attributes("") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rack", r"'rack': expected NAME:VALUE"),
        (":r1", r"':r1': the attribute name is empty"),
        ("rack:", r"'rack:': attribute 'rack' has no value"),
        ("rack:r 1", r"value 'r 1' of attribute 'rack' is not allowed"),
        ("ra/ck:r1", r"attribute name 'ra/ck' is not allowed"),
        ("rack:r1;rack:r2", r"'rack:r2': attribute 'rack' is given twice"),
        ("rack:" + "x" * 1025, r"at most 1024 characters"),
    ],
)
def test_bad_attributes_are_refused_naming_the_entry(text: str, message: str) -> None:
    with pytest.raises(InvalidAttributes, match=message):
        parse_attributes(text)
