"""One module per benchmark; `scripts/bench NAME` runs `scripts.benchmarks.NAME`."""
