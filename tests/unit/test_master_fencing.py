"""A master that may no longer act (deposed, fenced) lets its timers fire
without effect: above all it must not tear frameworks down, which would make
agents kill their tasks behind the new leader's back."""

import asyncio
from pathlib import Path

from corral.v1 import common_pb2, scheduler_pb2
from master import allocator as allocators
from master.config import MasterConfig
from master.links import QueueLink
from master.master import Master
from master.registry import FileStore, Registrar


def test_timers_of_a_master_that_may_not_act_change_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = MasterConfig(work_dir=str(tmp_path))
        master = Master(config, allocators.create("drf"), Registrar(FileStore(tmp_path)))
        link: QueueLink[scheduler_pb2.Event] = QueueLink()
        info = common_pb2.FrameworkInfo(name="f", failover_timeout_seconds=1)
        framework_id = master.subscribe(link, scheduler_pb2.SubscribeRequest(framework=info)).framework_id
        master.framework_disconnected(framework_id, link)
        master.may_act = lambda: False
        master._failover_expired(framework_id)
        assert framework_id in master.frameworks
        master.may_act = lambda: True
        master._failover_expired(framework_id)
        assert framework_id not in master.frameworks
        await master.stop()

    asyncio.run(scenario())
