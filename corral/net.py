"""gRPC settings every Corral server and client share (see shared/ENVIRONMENT.md).

- `grpc.so_reuseport` is off: otherwise a second master can silently bind the
  port of a running one.
- Keepalive: clients ping every 10 s; servers accept pings that often, so the
  server never answers GOAWAY `too_many_pings`.
- No `grpc.max_connection_age_ms`: it would cut agents' long sessions.
"""

from __future__ import annotations

from typing import Final

import grpc

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
KEEPALIVE_MS: Final = 10_000

SERVER_OPTIONS: Final[list[tuple[str, int]]] = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS),
    ("grpc.http2.max_pings_without_data", 0),
]

CHANNEL_OPTIONS: Final[list[tuple[str, int]]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a master restarts.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


def aio_channel(address: str) -> grpc.aio.Channel:
    """An insecure asyncio channel with Corral's options (TLS comes later)."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def channel(address: str) -> grpc.Channel:
    """A blocking channel with Corral's options, for the CLI."""
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
