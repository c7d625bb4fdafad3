"""`python -m agent`: the same as the `agent` console script."""

from agent.main import main

raise SystemExit(main())
