"""The incoming side (`--resume-handover`): take over what the blob describes.

Runs at start-up, before the server accepts connections. Every failure is
counted, never fatal: a daemon that could not take everything over still
serves. A blob that cannot be read at all thaws the workload at once and is
reported as `failed` on the next `/init`; a good one leaves the workload
frozen until that `/init` (or the fallback), which also starts the carried
process timeouts, so they count running time only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable

from envd import ENVD_VERSION
from envd.api.handover import HandoverResult, HandoverStatus
from envd.api.store import ControlPlane
from envd.config import Config
from envd.gen.upgrade import handover_pb2 as hpb
from envd.host.cgroups import PTYS, USER, CommandCgroup, Manager
from envd.services.filesystem.service import FilesystemService
from envd.services.process import launch
from envd.services.process.handler import ProcessHandle
from envd.services.process.service import ProcessService
from envd.services.process.status import ExitStatus
from envd.upgrade import backlogs, fds, schema
from envd.upgrade.freezer import HandoverFreezer
from envd.upgrade.outgoing import blob_path

log = logging.getLogger("envd.upgrade")

# Seam for the port forwarder: it takes the carried forwards once it exists.
ForwardsImport = Callable[[list[hpb.ForwardedPort]], object]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _is_our_child(pid: int) -> bool:
    """waitid without reaping: only our own children can be waited for (and reaped)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _command_cgroup(manager: Manager, pid: int) -> CommandCgroup | None:
    """The command cgroup (`user/cmd-N`, `ptys/cmd-N`) the process is in, if it is one of ours."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[0] != "0":
            continue
        kind_dir, name = os.path.split(parts[2].rstrip("/"))
        for kind in (USER, PTYS):
            parent = manager.path_for(kind)
            if parent is None or os.path.basename(kind_dir) != os.path.basename(parent):
                continue
            path = os.path.join(parent, name)
            with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs")) as f:
                if str(pid) in f.read().split():
                    return CommandCgroup(path)
    return None


def _adopt_proc(
    loop: asyncio.AbstractEventLoop, proc: hpb.HandoverProc, process: ProcessService
) -> tuple[ProcessHandle | None, str | None]:
    """The handle for one carried child, or (None, why not)."""
    taken: list[int] = []

    def take(fd: int) -> int | None:
        moved = fds.take(fd)
        if moved is not None:
            taken.append(moved)
        return moved

    try:
        stdout, stderr = take(proc.stdout_fd), take(proc.stderr_fd)
        stdin, master = take(proc.stdin_fd), take(proc.tty_fd)
        if not proc.pid or not _is_our_child(proc.pid):
            raise OSError(f"pid {proc.pid} is not a child of this process")
        pidfd = os.pidfd_open(proc.pid)
    except OSError as e:
        for fd in taken:
            with contextlib.suppress(OSError):
                os.close(fd)
        return None, str(e)
    outputs: dict[int, str] = {}
    if master is not None:
        outputs[master] = "pty"
    else:
        if stdout is not None:
            outputs[stdout] = "stdout"
        if stderr is not None:
            outputs[stderr] = "stderr"
    for carried in [*outputs, stdin]:
        if carried is not None:
            os.set_blocking(carried, False)
    # The same Child a fresh spawn yields: from here on the process is like any other.
    child = launch.Child(
        pid=proc.pid,
        pidfd=pidfd,
        outputs=outputs,
        stdin=stdin if master is None else None,
        master=master,
    )
    handle = ProcessHandle(
        loop,
        child,
        config=proc.config,
        tag=proc.tag if proc.has_tag else None,
        cgroup=_command_cgroup(process.cgroups, proc.pid),
        cgroups=process.cgroups,
    )
    return handle, None


async def resume(  # noqa: PLR0917  # the daemon's parts, each used once
    config: Config,
    process: ProcessService,
    filesystem: FilesystemService,
    control: ControlPlane,
    freezer: HandoverFreezer,
    status: HandoverStatus,
    forwards: ForwardsImport | None = None,
) -> HandoverResult:
    """Take over from the blob; fills `status` (read by /init)."""
    result = status.result = HandoverResult()

    async def thaw() -> None:
        async with freezer.lock:
            await freezer.thaw_locked()

    path = blob_path(config)
    try:
        blob = await asyncio.to_thread(_read, path)
        state = schema.decode(blob)
    except FileNotFoundError:
        # Nothing was handed over (upstream also reports zeros then).
        backlogs.remove(config.run_dir)
        await thaw()
        return result
    except (OSError, schema.HandoverError) as e:
        # No old image to fall back to: report it, and never leave the workload frozen.
        text = f"read handover: {e}" if isinstance(e, OSError) else str(e)
        print(f"resume-from-handover failed: {text}", file=sys.stderr)
        backlogs.remove(config.run_dir)
        result.failed = True
        await thaw()
        return result
    print(
        f"envd: resumed as v{ENVD_VERSION} after handover"
        f" (from v{state.from_ver}, {len(state.processes)} procs)",
        file=sys.stderr,
    )
    loop = asyncio.get_running_loop()
    carried = await asyncio.to_thread(backlogs.Carried.read, config.run_dir)
    retention = process.retention if process.retention.enabled else None
    timeouts: list[tuple[ProcessHandle, float]] = []
    for proc in state.processes:
        result.procs += 1
        handle, why = _adopt_proc(loop, proc, process)
        if handle is None:
            result.procs_failed += 1
            log.warning("handover: process %d not taken over: %s", proc.pid, why)
            continue
        if retention is not None:
            # First what the previous daemon had kept, then what is still in the pipes.
            handle.fanout.backlog = retention.backlog()
            backlogs.fill(handle.fanout.backlog, carried.live.get(proc.pid, []))
        process.register(handle, None)
        if proc.timeout_ms > 0:
            timeouts.append((handle, proc.timeout_ms / 1000))
    table = process.table
    for exit_ in state.terminated:
        result.retained += 1
        if exit_.pid in table.live:
            continue  # a pid cannot be both running and ended
        end = exit_.end
        backlog = None
        if retention is not None and exit_.pid in carried.retained:
            backlog = retention.backlog()
            backlogs.fill(backlog, carried.retained[exit_.pid])
        table.retain(
            exit_.pid,
            exit_.tag if exit_.has_tag else None,
            ExitStatus(end.exit_code, end.exited, end.status),
            max(0.0, exit_.remaining_ms / 1000),
            backlog,
        )
    with contextlib.suppress(OSError):
        os.unlink(path)
    # Re-armed while the workload is still frozen: nothing can change on disk
    # between the old daemon's last event and the new watch.
    for watcher in state.watchers:
        result.watchers += 1
        try:
            await filesystem.adopt_watcher(
                watcher.id,
                watcher.path,
                recursive=watcher.recursive,
                include_entry=watcher.include_entry_info,
                events=list(watcher.pending_events),
            )
        except Exception as e:
            result.watchers_failed += 1
            log.warning("handover: re-arming watcher %s failed: %s", watcher.id, e)
    control.nfs.mounted.update({m.path: m.lifecycle_id for m in state.mounts})
    if forwards is not None:
        forwards(list(state.forwards))
    freezer.resume_frozen(list(state.guest_frozen_cgroups))

    def arm_timeouts() -> None:
        now = loop.time()
        for handle, remaining in timeouts:
            if not handle.finished:
                handle.arm_timeout(now + remaining)

    status.keep_frozen(thaw, lambda: control.initialized)
    status.after_thaw(arm_timeouts)
    log.info(
        "handover_resumed from_ver=%s procs=%d procs_failed=%d retained=%d watchers=%d"
        " watchers_failed=%d",
        state.from_ver,
        result.procs,
        result.procs_failed,
        result.retained,
        result.watchers,
        result.watchers_failed,
    )
    return result
