"""Port forwards across the swap, in upstream's `ForwardedPort` terms.

Only socat forwards can be expressed (the socat child survives the execve and
the next image adopts its pid). envd-py's built-in relay forward has no place
in the schema: its listening socket closes with the execve, and the next
image's first port scan starts it again.
"""

from __future__ import annotations

from envd.gen.upgrade import handover_pb2 as hpb
from envd.port.forwarder import ForwardRecord, ForwardTable


def export_forwards(table: ForwardTable) -> list[hpb.ForwardedPort]:
    """Called right before the execve: socat children stop being watched here."""
    out: list[hpb.ForwardedPort] = []
    for record in table.export():
        if record.socat_pid <= 0:
            continue
        out.append(
            hpb.ForwardedPort(
                key=record.key,
                port=record.port,
                listener_pid=record.listener_pid,
                family=record.family,
                socat_pid=record.socat_pid,
            )
        )
    # Built-in forwards stay ours: their listening sockets must not cross.
    for forward in table.forwards.values():
        if forward.builtin is not None and not forward.builtin.closed:
            forward.builtin.listener.set_inheritable(False)
    return out


def adopt_forwards(table: ForwardTable, carried: list[hpb.ForwardedPort]) -> int:
    """Take over carried socat forwards (also after a failed execve: watched again)."""
    records = [
        ForwardRecord(f.key, f.port, f.family, f.listener_pid, socat_pid=f.socat_pid)
        for f in carried
        if f.socat_pid > 0
    ]
    return table.adopt(records)
