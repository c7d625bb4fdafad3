"""The framework SDK: an asyncio scheduler driver, a blocking facade and task packing.

See `frameworks` for the public names; the modules are `driver` (the
asyncio `SchedulerDriver`), `scheduler` (the `Scheduler` callbacks), `sync`
(`SyncDriver`, `SyncScheduler`), `tasks` (`TaskSpec`, `OfferPacker`, `pack`)
and `errors` (`CallError`, `NotSubscribed`).
"""
