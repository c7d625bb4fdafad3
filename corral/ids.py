"""Rules for ids that come from the wire.

Task, framework, agent and offer ids become directory names, cgroup names and
log fields, so they are held to a strict character set: letters, digits,
`.`, `_` and `-`, starting with a letter or digit, at most 128 characters.
That excludes `/`, `..`, NUL and anything else that could escape a sandbox.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

MAX_ID_LENGTH: Final = 128
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidId(ValueError):
    """An id that breaks the rules above; the message says which and why."""


def check_id(kind: str, value: str) -> str:
    """Return `value` if it is a well-formed id, else raise InvalidId."""
    if not value:
        raise InvalidId(f"{kind} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(f"{kind} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    if not _ID_RE.fullmatch(value):
        raise InvalidId(
            f"{kind} {value!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def is_valid_id(value: str) -> bool:
    return len(value) <= MAX_ID_LENGTH and _ID_RE.fullmatch(value) is not None


def new_id(prefix: str) -> str:
    """A fresh, unique, well-formed id such as `fw-3f2a...`."""
    return f"{prefix}-{uuid.uuid4().hex}"
