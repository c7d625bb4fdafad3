"""Exceptions the SDK raises to framework code."""

from __future__ import annotations

import grpc


class CallError(Exception):
    """The master refused a call, or the call could not reach it.

    `code` is the gRPC status code and `details` the master's message, which
    names what was wrong (for a refused Accept: every problem, task by task).
    An Accept refused with INVALID_ARGUMENT, NOT_FOUND or ALREADY_EXISTS
    changed nothing on the master: correct the call and try again.
    """

    def __init__(self, call: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{call} failed: {code.name}: {details}")
        self.call = call
        self.code = code
        self.details = details


class NotSubscribed(CallError):
    """A call was made while the driver holds no live subscription.

    This happens before the first SUBSCRIBED event, while the driver is
    resubscribing after a broken stream, and after it stopped. The code is
    UNAVAILABLE, so code that retries on UNAVAILABLE handles both alike.
    """

    def __init__(self, call: str) -> None:
        super().__init__(call, grpc.StatusCode.UNAVAILABLE, "the driver is not subscribed to a master")
