"""A bare scheduler client over raw gRPC, for tests that must send calls the
SDK would never send (wrong stream ids, foreign offers, hostile task ids)."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import grpc

from corral.net import CHANNEL_OPTIONS
from corral.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc


class RawFramework:
    def __init__(
        self,
        address: str,
        name: str = "raw",
        roles: tuple[str, ...] = (),
        failover: float = 0.0,
        framework_id: str = "",
    ) -> None:
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.info = common_pb2.FrameworkInfo(
            id=framework_id, name=name, roles=list(roles), failover_timeout_seconds=failover
        )
        self.events: queue.Queue[scheduler_pb2.Event | Exception] = queue.Queue()
        self.framework_id = ""
        self.stream_id = ""
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def subscribe(self, timeout: float = 10.0) -> scheduler_pb2.Event.Subscribed:
        self._stream = self.stub.Subscribe(scheduler_pb2.SubscribeRequest(framework=self.info))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        first = self.next_event(timeout)
        assert first.HasField("subscribed"), first
        self.framework_id = first.subscribed.framework_id
        self.stream_id = first.subscribed.stream_id
        return first.subscribed

    def _read(self) -> None:
        try:
            for event in self._stream:
                self.events.put(event)
        except grpc.RpcError as exc:
            self.events.put(exc)

    def next_event(self, timeout: float = 10.0) -> scheduler_pb2.Event:
        item = self.events.get(timeout=timeout)
        if isinstance(item, Exception):
            raise item
        return item

    def wait(self, kind: str, timeout: float = 10.0) -> scheduler_pb2.Event:
        """Skip events until one of `kind` (offers, update, rescind, error...);
        raise queue.Empty when none arrives within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise queue.Empty
            event = self.next_event(remaining)
            if event.HasField(kind):
                return event

    def offers(self, timeout: float = 10.0) -> list[scheduler_pb2.Offer]:
        return list(self.wait("offers", timeout).offers.offers)

    def call(self, method: str, **fields: Any) -> scheduler_pb2.CallResponse:
        fields.setdefault("framework_id", self.framework_id)
        fields.setdefault("stream_id", self.stream_id)
        request_type = getattr(scheduler_pb2, f"{method}Request")
        return getattr(self.stub, method)(request_type(**fields), timeout=10)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        self.channel.close()


def task_info(
    task_id: str, agent_id: str, command: str = "true", cpus: float = 0.1, mem: float = 32, **extra: Any
) -> common_pb2.TaskInfo:
    return common_pb2.TaskInfo(
        task_id=task_id,
        agent_id=agent_id,
        resources=[
            common_pb2.Resource(name="cpus", scalar=cpus),
            common_pb2.Resource(name="mem", scalar=mem),
        ],
        command=common_pb2.CommandInfo(value=command, shell=True),
        **extra,
    )


def launch(*tasks: common_pb2.TaskInfo) -> list[scheduler_pb2.Operation]:
    return [scheduler_pb2.Operation(launch=scheduler_pb2.Operation.Launch(task_infos=list(tasks)))]
