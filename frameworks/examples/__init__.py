"""Frameworks that show how to use the SDK: `hello` (run N commands) and `keepalive` (keep K tasks alive)."""
