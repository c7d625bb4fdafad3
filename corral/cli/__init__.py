"""The `corral` operator command: start a local cluster, run a command as a
task, and show the state of a running cluster.

One module per group of subcommands (`up`, `run`, `state`); `main` builds the
argument parser, reads the environment and sets up logging, and is the only
module that does either.
"""
