"""What this host offers: resources detected with psutil, the operator's overrides,
and host attributes.

Detection follows Mesos (`Containerizer::resources`): every logical cpu; all memory
but 1 GiB (half of it on hosts with less than 2 GiB); the work dir's filesystem but
5 GiB (half of it below 10 GiB); ports 31000-32000. An override replaces the detected
value of the resources it names and leaves the others alone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import psutil

from corral.resources import RANGE_NAMES, Interval, Resources
from corral.v1 import common_pb2

MIB: Final = 1024 * 1024
GIB: Final = 1024 * MIB
DEFAULT_PORTS: Final[tuple[Interval, ...]] = ((31000, 32000),)
MAX_ATTRIBUTE_NAME: Final = 128
MAX_ATTRIBUTE_VALUE: Final = 1024

# Mesos' attribute values are text ([a-zA-Z0-9_/.-]), scalars, ranges ([1-5]) or
# sets ({a,b}); Corral carries them all as text, so it accepts their characters.
_ATTRIBUTE_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_ATTRIBUTE_VALUE_RE: Final = re.compile(r"[A-Za-z0-9_./\[\]{},-]+")


class InvalidAttributes(ValueError):
    """An `--attributes` value that cannot be parsed; the message says where."""


def default_resources(cpus: int, mem_bytes: int, disk_bytes: int) -> Resources:
    """The resources Mesos would advertise for a host of this size (mem, disk in MiB)."""
    mem = mem_bytes - GIB if mem_bytes >= 2 * GIB else mem_bytes // 2
    disk = disk_bytes - 5 * GIB if disk_bytes >= 10 * GIB else disk_bytes // 2
    return Resources.of(
        ranges={"ports": DEFAULT_PORTS},
        cpus=max(cpus, 1),
        mem=mem // MIB,
        disk=disk // MIB,
    )


def detect(work_dir: Path) -> Resources:
    """Measure this host; `work_dir` names the filesystem whose size is `disk`."""
    return default_resources(
        cpus=psutil.cpu_count(logical=True) or 1,
        mem_bytes=psutil.virtual_memory().total,
        disk_bytes=psutil.disk_usage(str(_existing_ancestor(work_dir))).total,
    )


def apply_overrides(detected: Resources, text: str) -> Resources:
    """Replace, per resource name, what was detected by what `text` says.

    `text` uses the Mesos flag syntax, `cpus:4;mem:2048;ports:[31000-32000]`. A name
    given with a zero amount (`disk:0`) removes that resource. Raises
    `corral.resources.ResourceError` for malformed text.
    """
    overrides = Resources.parse(text)
    named = {part.partition(":")[0].strip() for part in text.split(";") if part.strip()}
    kept = Resources(
        {name: milli for name, milli in detected.scalar_items() if name not in named},
        {name: detected.ranges(name) for name in RANGE_NAMES if name not in named},
    )
    return kept + overrides


def host_resources(work_dir: Path, overrides: str) -> Resources:
    """Detected resources with the operator's overrides applied."""
    return apply_overrides(detect(work_dir), overrides)


def parse_attributes(text: str) -> list[common_pb2.Attribute]:
    """Parse `rack:r1;zone:a` into attributes, in the order given.

    Raises InvalidAttributes naming the offending entry: a missing `:`, an empty or
    repeated name, or a character that is not allowed.
    """
    attributes: list[common_pb2.Attribute] = []
    seen: set[str] = set()
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, value = (s.strip() for s in part.partition(":"))
        if not sep:
            raise InvalidAttributes(f"{part!r}: expected NAME:VALUE, e.g. rack:r1")
        if not name:
            raise InvalidAttributes(f"{part!r}: the attribute name is empty")
        if not value:
            raise InvalidAttributes(f"{part!r}: attribute {name!r} has no value")
        if len(name) > MAX_ATTRIBUTE_NAME or not _ATTRIBUTE_NAME_RE.fullmatch(name):
            raise InvalidAttributes(
                f"{part!r}: attribute name {name!r} is not allowed: use letters, digits, '.', '_' "
                f"and '-', at most {MAX_ATTRIBUTE_NAME} characters"
            )
        if len(value) > MAX_ATTRIBUTE_VALUE or not _ATTRIBUTE_VALUE_RE.fullmatch(value):
            raise InvalidAttributes(
                f"{part!r}: value {value!r} of attribute {name!r} is not allowed: use letters, "
                f"digits and '_./-[]{{}},', at most {MAX_ATTRIBUTE_VALUE} characters"
            )
        if name in seen:
            raise InvalidAttributes(f"{part!r}: attribute {name!r} is given twice")
        seen.add(name)
        attributes.append(common_pb2.Attribute(name=name, text=value))
    return attributes


def _existing_ancestor(path: Path) -> Path:
    """The nearest existing directory at or above `path` (the work dir may be new)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
