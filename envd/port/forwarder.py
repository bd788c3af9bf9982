"""Port forwarding: every second, a forward for each new loopback listener, none for gone ones.

The forwards live in one `ForwardTable` keyed `<owner pid>-<port>` (upstream's
key). A key seen for the first time gets a forward to `<forward ip>:<port>`:
socat when it is on PATH (upstream's exact command), else the built-in relay
(`relay.py`). A key missing from a scan loses its forward. A forward that
failed or ended stays in the table, so it is not retried while its key
persists (upstream: the same bind would fail again every second).

For a live upgrade the table can be exported as plain records (key, port,
family, listener pid, socat pid, built-in listener fd) and re-adopted by the
next envd before its first scan, so no duplicate forward competes for a bind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from dataclasses import dataclass, field

from envd.port import socat
from envd.port.relay import BuiltinForward, Slots, connection_budget
from envd.port.scan import Listener, Scanner

log = logging.getLogger("envd.port.forwarder")

SCAN_PERIOD_S = 1.0
DEFAULT_FORWARD_IP = "169.254.0.21"


@dataclass(frozen=True, slots=True)
class ForwardRecord:
    """One forward as carried across a live upgrade (all plain values)."""

    key: str
    port: int
    family: int
    listener_pid: int
    socat_pid: int = 0  # 0: not a socat forward
    listen_fd: int = -1  # the built-in forward's listening socket; -1: none


@dataclass(eq=False)
class Forward:
    key: str
    port: int
    family: int
    listener_pid: int
    socat: socat.SocatProcess | None = None
    builtin: BuiltinForward | None = None
    # No forward runs for this key (start failed, or it ended); kept so that
    # the key is not retried while it persists.
    failed: bool = False

    def hand_over(self) -> ForwardRecord | None:
        """Stop watching the running forward without stopping it; None if none runs."""
        if self.socat is not None and not self.socat.exited:
            self.socat.detach()
            return ForwardRecord(
                self.key, self.port, self.family, self.listener_pid, socat_pid=self.socat.pid
            )
        if self.builtin is not None and not self.builtin.closed:
            fd = self.builtin.detach()
            return ForwardRecord(self.key, self.port, self.family, self.listener_pid, listen_fd=fd)
        return None


@dataclass(eq=False)
class ForwardTable:
    """All forwards by key: the forwarder's whole state."""

    loop: asyncio.AbstractEventLoop
    forward_ip: str = DEFAULT_FORWARD_IP
    cgroup_dir: str | None = None  # the `socats` cgroup, when cgroups are managed
    socat_path: str | None = None  # None: look socat up on PATH for each new forward
    slots: Slots = field(default_factory=lambda: Slots(connection_budget()))
    forwards: dict[str, Forward] = field(default_factory=dict)

    def sync(self, listeners: list[Listener]) -> None:
        """Start forwards for new keys, stop those whose key is gone."""
        seen: dict[str, Listener] = {}
        for listener in listeners:
            seen.setdefault(listener.key, listener)
        for key in [k for k in self.forwards if k not in seen]:
            self.stop(self.forwards.pop(key))
        for key, listener in seen.items():
            if key not in self.forwards:
                self.forwards[key] = self.start(listener)

    def start(self, listener: Listener) -> Forward:
        forward = Forward(listener.key, listener.port, listener.family, listener.pid)
        log.debug(
            "Detected new opened port on localhost that is not forwarded",
            extra={
                "ip": "127.0.0.1" if listener.family == 4 else "::1",
                "port": listener.port,
                "family": listener.family,
                "state": "LISTEN",
                "pid": listener.pid,
            },
        )
        if not self._address_available(forward):
            forward.failed = True
            return forward
        executable = self.socat_path or socat.find_socat()
        if executable is not None:
            self._start_socat(forward, executable)
        else:
            self._start_builtin(forward)
        return forward

    def _address_available(self, forward: Forward) -> bool:
        """Whether the forward address is this machine's; socat's bind would fail otherwise.

        Outside a sandbox (tests, a debug container) the guest address does
        not exist: checking first saves spawning a socat per listener that
        exits at once with the same error.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
            try:
                probe.bind((self.forward_ip, 0))
            except OSError as e:
                if e.errno != errno.EADDRNOTAVAIL:
                    return True  # let the forward itself report anything else
                log.error(
                    "Failed to start port forwarding - the forward address is not assigned here",
                    extra={
                        "pid": forward.listener_pid,
                        "port": forward.port,
                        "sourceIP": self.forward_ip,
                        "error": str(e),
                    },
                )
                return False
        return True

    def _start_socat(self, forward: Forward, executable: str) -> None:
        argv = socat.socat_argv(forward.port, forward.family, self.forward_ip)
        command = " ".join([executable, *argv[1:]])
        fields = {"socatCmd": command, "pid": forward.listener_pid, "port": forward.port}
        log.debug("About to start port forwarding", extra=fields)
        try:
            pid = socat.spawn(executable, argv, self.cgroup_dir)
            forward.socat = socat.SocatProcess(self.loop, pid, command, self._socat_exited)
        except OSError as e:
            forward.failed = True
            log.error(
                "Failed to start port forwarding - failed to start socat",
                extra={**fields, "error": str(e)},
            )

    def _socat_exited(self, process: socat.SocatProcess) -> None:
        for forward in self.forwards.values():
            if forward.socat is process:
                forward.failed = True

    def _start_builtin(self, forward: Forward) -> None:
        fields = {"pid": forward.listener_pid, "port": forward.port, "family": forward.family}
        try:
            forward.builtin = BuiltinForward(
                self.loop, forward.port, forward.family, self.forward_ip, self.slots
            )
        except OSError as e:
            forward.failed = True
            log.error(
                "Failed to start port forwarding - socat is not on PATH and the built-in "
                "forwarder could not listen",
                extra={**fields, "sourceIP": self.forward_ip, "error": str(e)},
            )
            return
        log.debug("Started built-in port forwarding", extra={**fields, "sourceIP": self.forward_ip})

    def stop(self, forward: Forward) -> None:
        fields = {"pid": forward.listener_pid, "port": forward.port, "family": forward.family}
        if forward.socat is not None:
            log.debug("Stopping port forwarding", extra={**fields, "socatPid": forward.socat.pid})
            forward.socat.kill()
        if forward.builtin is not None:
            log.debug("Stopping port forwarding", extra=fields)
            forward.builtin.close()

    def close(self) -> None:
        """Stop every forward (socat groups killed; the reaper collects them)."""
        for forward in self.forwards.values():
            self.stop(forward)

    async def wait_reaped(self, within_s: float = 1.0) -> None:
        """Let the pidfd reapers collect the killed socats; no zombie outlives the table."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        running = [f.socat for f in self.forwards.values() if f.socat is not None]
        while any(not p.exited for p in running) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for process in running:
            process.detach()
        self.forwards.clear()

    # --- live upgrade ------------------------------------------------------

    def export(self) -> list[ForwardRecord]:
        """Hand every running forward over, for the next envd after a same-pid execve.

        socats keep running (still our children after the exec); built-in
        listeners stay open as inheritable fds, while their relayed connections
        are closed. The table is empty afterwards: call it last, just before exec.
        """
        records = [r for f in self.forwards.values() if (r := f.hand_over()) is not None]
        self.forwards.clear()
        return records

    def adopt(self, records: list[ForwardRecord]) -> int:
        """Take over forwards a previous envd exported; call before the first scan."""
        adopted = 0
        for r in records:
            forward = Forward(r.key, r.port, r.family, r.listener_pid)
            try:
                if r.socat_pid > 0:
                    command = " ".join(socat.socat_argv(r.port, r.family, self.forward_ip))
                    forward.socat = socat.SocatProcess(
                        self.loop, r.socat_pid, command, self._socat_exited
                    )
                elif r.listen_fd >= 0:
                    listener = socket.socket(fileno=r.listen_fd)
                    listener.set_inheritable(False)
                    forward.builtin = BuiltinForward(
                        self.loop, r.port, r.family, self.forward_ip, self.slots, listener=listener
                    )
                else:
                    continue
            except OSError as e:
                # Gone during the handover: the next scan starts a fresh forward.
                if e.errno != errno.ESRCH:
                    log.error(
                        "Failed to adopt a port forward", extra={"key": r.key, "error": str(e)}
                    )
                continue
            self.forwards[r.key] = forward
            adopted += 1
        return adopted


class PortForwarder:
    """The scan loop: a scan each second (in a worker thread), applied on the loop."""

    def __init__(self, table: ForwardTable, scanner: Scanner | None = None) -> None:
        self.table = table
        self.scanner = scanner or Scanner()
        self._task: asyncio.Task[None] | None = None
        self._own_pid = os.getpid()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                listeners = await loop.run_in_executor(None, self.scanner.scan)
            except OSError as e:
                log.error("Port scan failed", extra={"error": str(e)})
            else:
                # Our own sockets (the built-in relay, or a -forward-ip on
                # loopback) are never forwarded back to ourselves.
                try:
                    self.table.sync([li for li in listeners if li.pid != self._own_pid])
                except Exception:
                    # One bad forward must not end forwarding for the daemon's life.
                    log.exception("Port forwarding refresh failed")
            await asyncio.sleep(max(0.0, SCAN_PERIOD_S - (loop.time() - started)))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.table.close()
        await self.table.wait_reaped()
