"""Isolation of process tasks: what the process containerizer adds when it can.

`cgroups` puts each task in its own control group (cgroup v1 or v2) with cpu,
memory and pids limits; without root or cgroups the containerizer falls back to
process-group kill only.
"""
