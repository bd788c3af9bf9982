"""Port forwards across the swap, in upstream's `ForwardedPort` terms.

Only socat forwards can be expressed (the socat child survives the execve and
the next image adopts its pid). envd-py's built-in relay forward has no place
in the schema, and its listening socket must not leak into a peer that does not
know it (an upstream envd would never close it, and its own socat could not
bind the port): the socket closes with the execve and the next image's first
port scan starts the forward again.
"""

from __future__ import annotations

import contextlib
import os

from envd.gen.upgrade import handover_pb2 as hpb
from envd.port.forwarder import ForwardRecord, ForwardTable


class ForwardCarrier:
    def __init__(self, table: ForwardTable) -> None:
        self.table = table
        self._exported: list[ForwardRecord] = []

    def export(self) -> list[hpb.ForwardedPort]:
        """Right before the execve: the table hands every forward over and is empty after."""
        self._exported = self.table.export()
        out: list[hpb.ForwardedPort] = []
        for record in self._exported:
            if record.socat_pid > 0:
                out.append(
                    hpb.ForwardedPort(
                        key=record.key,
                        port=record.port,
                        listener_pid=record.listener_pid,
                        family=record.family,
                        socat_pid=record.socat_pid,
                    )
                )
            elif record.listen_fd >= 0:
                with contextlib.suppress(OSError):
                    os.set_inheritable(record.listen_fd, False)
        return out

    def restore(self) -> None:
        """The execve failed: take everything back, built-in listeners included."""
        exported, self._exported = self._exported, []
        self.table.adopt(exported)

    def adopt(self, carried: list[hpb.ForwardedPort]) -> int:
        """The incoming side: the previous image's socat forwards."""
        records = [
            ForwardRecord(f.key, f.port, f.family, f.listener_pid, socat_pid=f.socat_pid)
            for f in carried
            if f.socat_pid > 0
        ]
        return self.table.adopt(records)
