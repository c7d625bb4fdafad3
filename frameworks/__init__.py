"""Corral's framework SDK and the frameworks that ship with Corral.

A framework subclasses `Scheduler` (or `SyncScheduler` without asyncio),
runs it with a `SchedulerDriver` (or `SyncDriver`), and turns offers into
launches with `TaskSpec` and `pack`/`OfferPacker`. Shipped frameworks:
`frameworks.runner` (behind `corral run`) and `frameworks.examples`.
"""

from frameworks.sdk.driver import DEFAULT_MASTER, SchedulerDriver
from frameworks.sdk.errors import CallError, NotSubscribed
from frameworks.sdk.scheduler import Scheduler
from frameworks.sdk.sync import SyncDriver, SyncScheduler
from frameworks.sdk.tasks import OfferPacker, Packing, TaskSpec, pack

__all__ = [
    "DEFAULT_MASTER",
    "CallError",
    "NotSubscribed",
    "OfferPacker",
    "Packing",
    "Scheduler",
    "SchedulerDriver",
    "SyncDriver",
    "SyncScheduler",
    "TaskSpec",
    "pack",
]
