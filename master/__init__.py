"""The Corral master: leader lifecycle, registry, offers, and the gRPC services.

Where things are:
- `server.py` wires the gRPC services to one `Master` and runs them.
- `master.py` holds the cluster's live state on one asyncio loop (agents,
  frameworks, tasks) and relays status updates.
- `offers.py` makes offers from the allocator's decisions, times them out and
  rescinds them; `validation.py` checks what a framework accepts.
- `allocator/` decides who is offered what (DRF); pure, no I/O.
- `registry.py` is the durable registry behind a store interface.
"""
