"""The outgoing side: freeze, write the handover blob, execve the next daemon.

Once the workload is frozen, everything from the snapshot to the execve runs
without yielding to the event loop, so no RPC, watcher batch or output read
can change the state between the moment it is written down and the swap:
that is what upstream's held locks achieve. On any failure before the execve
everything is put back (descriptors, readers, watchers, the freeze) and the
old daemon keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from envd import ENVD_VERSION
from envd.api.store import ControlPlane
from envd.config import Config
from envd.gen.process import process_pb2
from envd.gen.upgrade import handover_pb2 as hpb
from envd.host.freezer import HANDOVER_MAX_WAIT_S
from envd.services.filesystem.service import FilesystemService
from envd.services.process import spawners
from envd.services.process.handler import ProcessHandle
from envd.services.process.plan import go_errno_text
from envd.services.process.service import ProcessService
from envd.upgrade import backlogs, fds, schema
from envd.upgrade.freezer import FreezeError, HandoverFreezer

if TYPE_CHECKING:
    from envd.services.filesystem.watch import Watcher

log = logging.getLogger("envd.upgrade")

BLOB_NAME = "envd-handover.pb"
RESUME_FLAG = "--resume-handover"
# How long output already read may take to reach its subscribers before the swap.
FLUSH_BUDGET_S = 1.0

# The port forwarder's running forwards as handover messages, and their re-adoption
# when the execve fails (envd.upgrade.forwards; set by the app once the table exists).
ForwardsExport = Callable[[], list[hpb.ForwardedPort]]
ForwardsRestore = Callable[[list[hpb.ForwardedPort]], object]


class UpgradeError(Exception):
    pass


def blob_path(config: Config) -> str:
    return os.path.join(config.run_dir, BLOB_NAME)


def exec_argv(new_bin: str | None) -> tuple[str, list[str]]:
    """The program to execve and its argv: the same flags plus `--resume-handover`.

    Without a new binary the daemon re-executes itself: the frozen bundle's
    executable, or the interpreter with its original command line.
    """
    if new_bin is None:
        if getattr(sys, "frozen", False):
            path, argv = sys.executable, [sys.executable, *sys.argv[1:]]
        else:
            path, argv = sys.executable, [sys.executable, *sys.orig_argv[1:]]
    else:
        path, argv = new_bin, [new_bin, *sys.argv[1:]]
    argv = [a for a in argv if a not in (RESUME_FLAG, "-resume-handover")]
    return path, [*argv, RESUME_FLAG]


@dataclass(eq=False)
class Upgrader:
    config: Config
    process: ProcessService
    filesystem: FilesystemService
    control: ControlPlane
    freezer: HandoverFreezer
    forwards: ForwardsExport = field(default=lambda: [])
    restore_forwards: ForwardsRestore = field(default=lambda _carried: None)

    async def upgrade(self, new_bin: str | None) -> None:
        """Does not return on success; raises UpgradeError with the 500's text."""
        print(
            f"envd: self-upgrade (from v{ENVD_VERSION}, newBin={new_bin or ''!r})",
            file=sys.stderr,
        )
        async with self.freezer.lock:
            try:
                await self.freezer.freeze_locked(HANDOVER_MAX_WAIT_S)
            except FreezeError as e:
                await self.freezer.thaw_locked()
                raise UpgradeError(f"handover aborted: freeze workload: {e}") from None
            handles = list(self.process.table.live.values())
            watchers = [
                p.watcher
                for p in self.filesystem.polled_watchers().values()
                if p.watcher is not None
            ]
            for handle in handles:
                handle.hold_output()
            for watcher in watchers:
                watcher.hold()
            relocation = fds.Relocation()
            error: UpgradeError
            try:
                await self._settle(handles, watchers)
                self._swap(new_bin, relocation)  # returns only by raising
                error = UpgradeError("execve returned")
            except UpgradeError as e:
                error = e
            except Exception as e:  # anything unexpected must not strand a frozen workload
                log.exception("upgrade failed")
                error = UpgradeError(f"handover failed: {e}")
            finally:
                relocation.undo()
                with contextlib.suppress(OSError):
                    os.unlink(blob_path(self.config))
                backlogs.remove(self.config.run_dir)
                for handle in handles:
                    handle.release_output()
                for watcher in watchers:
                    watcher.release()
                await self.freezer.thaw_locked()
            raise error

    async def _settle(self, handles: list[ProcessHandle], watchers: list[Watcher]) -> None:
        """Let what was already read reach its subscribers, and watchers finish their batch."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FLUSH_BUDGET_S
        while loop.time() < deadline:
            queued = any(s.queued for h in handles for s in h.fanout.subscribers)
            busy = any(not w.idle for w in watchers)
            if not queued and not busy:
                break
            await asyncio.sleep(0.005)
        # The streams' last writes leave the event loop for the sockets.
        for _ in range(3):
            await asyncio.sleep(0.01)

    def _swap(self, new_bin: str | None, relocation: fds.Relocation) -> None:
        """Snapshot, write the blob, execve; synchronous on purpose (see module doc)."""
        state = self.snapshot(relocation)
        try:
            self._write_and_exec(state, new_bin)
        except UpgradeError:
            # The socat children stopped being watched at the snapshot: watch them again.
            self.restore_forwards(list(state.forwards))
            raise

    def _write_and_exec(self, state: hpb.HandoverState, new_bin: str | None) -> None:
        path = blob_path(self.config)
        try:
            backlogs.write(self.config.run_dir, backlogs.export(self.process.table))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, schema.encode(state))
            finally:
                os.close(fd)
        except OSError as e:
            text = go_errno_text(e.errno or 0)
            raise UpgradeError(f"write handover: {e.filename or path}: {text}") from None
        program, argv = exec_argv(new_bin)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        # The fork server is our child and would outlive the image as a zombie that
        # the next one (maybe upstream's) never reaps: let it go now. Should the
        # execve fail, children are started by the Popen fallback from here on.
        spawners.stop_fork_server()
        try:
            os.execve(program, argv, dict(os.environ))
        except OSError as e:
            raise UpgradeError(f"execve {program}: {go_errno_text(e.errno or 0)}") from None

    def snapshot(self, relocation: fds.Relocation) -> hpb.HandoverState:
        loop = asyncio.get_running_loop()
        now = loop.time()
        state = hpb.HandoverState(from_ver=ENVD_VERSION)
        table = self.process.table
        try:
            for index, handle in enumerate(table.live.values()):
                state.processes.append(_proc(handle, index, relocation, now))
        except fds.FdError as e:
            raise UpgradeError(f"relocate handover fds: {e}") from None
        for entry in table.retained.values():
            remaining = entry.timer.when() - now
            if remaining <= 0:
                continue
            status = entry.status
            end = process_pb2.ProcessEvent.EndEvent(
                exit_code=status.exit_code, exited=status.exited, status=status.status
            )
            if status.error is not None:
                end.error = status.error
            exit_ = state.terminated.add(
                pid=entry.pid, end=end, remaining_ms=max(1, int(remaining * 1000))
            )
            if entry.tag is not None:
                exit_.tag, exit_.has_tag = entry.tag, True
        for watcher_id, polled in self.filesystem.polled_watchers().items():
            watcher = polled.watcher
            # A failed watcher cannot be expressed; it is dropped (NOT_FOUND afterwards).
            if watcher is None or watcher.closed or polled.error is not None:
                continue
            state.watchers.add(
                id=watcher_id,
                path=watcher.root,
                recursive=watcher.recursive,
                include_entry_info=watcher.include_entry,
                pending_events=polled.events,
            )
        for mount_path, lifecycle in self.control.nfs.mounted.items():
            state.mounts.add(path=mount_path, lifecycle_id=lifecycle)
        state.forwards.extend(self.forwards())
        state.guest_frozen_cgroups.extend(self.freezer.guest_frozen())
        return state


def _proc(
    handle: ProcessHandle, index: int, relocation: fds.Relocation, now: float
) -> hpb.HandoverProc:
    outputs = handle.output_fds()
    proc = hpb.HandoverProc(
        pid=handle.pid,
        cg_type="pty" if handle.terminal else "user",
        config=handle.config,
        stdout_fd=relocation.place(outputs.get("stdout"), fds.slot(index, fds.STDOUT)),
        stderr_fd=relocation.place(outputs.get("stderr"), fds.slot(index, fds.STDERR)),
        stdin_fd=relocation.place(handle.stdin, fds.slot(index, fds.STDIN)),
        tty_fd=relocation.place(handle.master, fds.slot(index, fds.TTY)),
    )
    if handle.tag is not None:
        proc.tag, proc.has_tag = handle.tag, True
    if handle.kill_at is not None:
        # Already past: kill as soon as it runs again.
        proc.timeout_ms = max(1, int((handle.kill_at - now) * 1000))
    return proc
