"""The Corral agent: one per host.

It detects the host's resources, keeps one bidirectional stream to the leading
master (`agent.session`), launches tasks through pluggable containerizers
(`agent.containerizer`) and delivers their status updates reliably
(`agent.status_updates`). `agent.agent.Agent` ties these together; `agent.main` is
the entry point.

Decisions where docs/protocol.md is silent (Mesos' behaviour unless said otherwise):

- A launched task reports TASK_RUNNING once its process started; there is no
  executor, so no TASK_STARTING, and no TASK_KILLING (frameworks cannot opt in to it
  yet). A task that cannot start ends at once: TASK_ERROR for a task that is invalid
  here (ids, environment, an absent containerizer), TASK_FAILED with
  REASON_LAUNCH_FAILED for one that failed to start (executable not found).
- A KillTask for an unknown task yields a reliable TASK_LOST with
  REASON_RECONCILIATION. The grace period is the KillTask's policy if it gives one
  above zero, else the task's, else `--kill-grace-period`.
- A task killed on request ends TASK_KILLED whatever its exit status.
- When a task's leader process exits, whatever it left in its process group is
  SIGKILLed (Mesos destroys the container when the executor exits).
- ShutdownFramework kills the framework's tasks and drops its unacknowledged
  updates; nothing more is reported for them, since nobody is left to acknowledge.
- A RunTask for a task that is live on this agent is ignored (a replay); a task id
  reused after its terminal state gets a fresh sandbox, `<task_id>~N`.
- Tasks inherit only PATH and LANG from the agent. HOME and CORRAL_SANDBOX are the
  sandbox; PORT0..N and PORTS come from the task's port ranges (the task may set
  them itself); CORRAL_TASK_ID, CORRAL_FRAMEWORK_ID, CORRAL_AGENT_ID and
  CORRAL_SANDBOX are the agent's, and a task that sets them is refused.
- Stopping the agent never kills tasks; a kill under way is finished with SIGKILL.
"""
