"""The Corral agent: one per host.

It detects the host's resources, keeps one bidirectional stream to the
leading master (`agent.session`), launches tasks through pluggable
containerizers (`agent.containerizer`) and delivers their status updates
reliably (`agent.status_updates`). `agent.agent.Agent` ties these together;
`agent.main` is the entry point.
"""
