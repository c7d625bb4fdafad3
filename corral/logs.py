"""Logging set-up for entry points only; modules use logging.getLogger(__name__)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final

#: Fields that name the object a log line is about, passed with `extra=`.
CONTEXT_FIELDS: Final = ("agent_id", "framework_id", "task_id", "offer_id")


class _ContextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{f}={getattr(record, f)}" for f in CONTEXT_FIELDS if hasattr(record, f))
        return f"{line} [{context}]" if context else line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            if hasattr(record, field):
                data[field] = getattr(record, field)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup(level: str = "INFO", *, json_lines: bool = False, name: str = "") -> None:
    """Send logs to stderr, as text with context fields or as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        fmt = f"%(asctime)s.%(msecs)03d {name + ' ' if name else ''}%(levelname)s %(name)s: %(message)s"
        formatter = _ContextFormatter(fmt, datefmt="%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's own debug lines (one per event-loop poll) drown everything else.
    logging.getLogger("grpc").setLevel(max(logging.INFO, root.level))
