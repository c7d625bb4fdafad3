"""`master`: run a Corral master."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from corral import logs
from corral.config import load
from master.config import MasterConfig
from master.registry import RegistryError
from master.server import serve


def main(argv: Sequence[str] | None = None) -> int:
    config = load(
        MasterConfig,
        argv,
        os.environ,
        prog="master",
        description="Run a Corral master: it admits agents, makes resource offers to frameworks "
        "(DRF across roles) and relays their tasks' status updates.",
        env_prefix="CORRAL_MASTER_",
    )
    logs.setup(config.log_level, json_lines=config.log_json, name="master")
    try:
        asyncio.run(serve(config))
    except (RegistryError, OSError) as exc:
        print(f"master: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
