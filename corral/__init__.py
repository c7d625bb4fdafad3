"""Corral's shared package: the wire contract (`corral.v1`), resource
arithmetic, id rules, gRPC settings and configuration that master, agent and
frameworks all need. Keep it small; the `corral` command lives in `corral.cli`.
"""

__version__ = "0.1.0"
