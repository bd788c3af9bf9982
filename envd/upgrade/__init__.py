"""Live self-upgrade: `POST /upgrade` (outgoing side) and `--resume-handover` (incoming).

docs/handover.md describes the protocol and what crosses the execve.
"""
