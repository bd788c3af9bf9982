"""NFS volume mounts requested by `/init`.

Each path is remembered with the lifecycle it was mounted for; a repeated
`/init` of the same lifecycle leaves it alone, a new lifecycle remounts it.
Mounting runs with its own 10 s budget, detached from the request, so an
orchestrator retry cannot interrupt a half-done mount.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VolumeMount:
    """One `/init` volume: the NFS export and where it is mounted."""

    nfs_target: str
    path: str


MOUNT_BUDGET_S = 10.0
LAZY_UMOUNT_S = 2.0
NFS_OPTIONS = ",".join(
    (
        "fg",
        "hard",
        "sync",
        "rsize=1048576",
        "wsize=1048576",
        "mountproto=tcp",
        "mountport=2049",
        "proto=tcp",
        "port=2049",
        "nfsvers=3",
        "noacl",
        "noac",
        "lookupcache=none",
    )
)

log = logging.getLogger("envd.host.nfs")


class NFSError(Exception):
    pass


class CommandError(Exception):
    def __init__(self, argv: Sequence[str], status: str, output: bytes) -> None:
        super().__init__(f"`{' '.join(argv)}` failed: {status}\n{output.decode(errors='replace')}")
        self.returncode_text = status


async def run(argv: Sequence[str], limit_s: float) -> tuple[int, bytes]:
    """Run a command with combined output; kill and reap it when the budget ends."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    assert proc.returncode is not None
    return proc.returncode, output


def _status(code: int) -> str:
    return f"exit status {code}" if code >= 0 else f"signal: {-code}"


class NFSMounter:
    def __init__(self) -> None:
        self.mounted: dict[str, str] = {}  # path -> lifecycle ID
        self._busy = False

    async def setup(self, mounts: Sequence[VolumeMount], lifecycle_id: str | None) -> None:
        """Ensure every mount; raises NFSError with upstream's text on the first failure."""
        if self._busy:  # another /init is mounting: upstream skips silently
            return
        lifecycle = lifecycle_id or ""
        todo = [m for m in mounts if self.mounted.get(m.path) != lifecycle]
        if not todo:
            return
        self._busy = True
        # Shielded: the request going away must not interrupt a mount, and
        # the busy flag stays up until the mounting itself is over.
        job = asyncio.ensure_future(self._mount_all(todo, lifecycle))
        job.add_done_callback(self._done)
        await asyncio.shield(job)

    def _done(self, _job: asyncio.Future[None]) -> None:
        self._busy = False

    async def _mount_all(self, mounts: Sequence[VolumeMount], lifecycle: str) -> None:
        try:
            async with asyncio.timeout(MOUNT_BUDGET_S), asyncio.TaskGroup() as group:
                for mount in mounts:
                    group.create_task(self._mount_one(mount, lifecycle))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        except TimeoutError:
            raise NFSError("context deadline exceeded") from None

    async def _mount_one(self, mount: VolumeMount, lifecycle: str) -> None:
        try:
            await self._unmount(mount.path)
        except (OSError, CommandError) as e:
            raise NFSError(f"failed to unmount stale NFS mount at {mount.path!r}: {e}") from e
        try:
            for argv in (
                ["mkdir", "-p", mount.path],
                ["mount", "-v", "-t", "nfs", "-o", NFS_OPTIONS, mount.nfs_target, mount.path],
            ):
                code, output = await run(argv, MOUNT_BUDGET_S)
                if code != 0:
                    raise CommandError(argv, _status(code), output)
        except (OSError, CommandError) as e:
            raise NFSError(f'failed to mount NFS at "{mount.path}": {e}') from e
        self.mounted[mount.path] = lifecycle

    async def _unmount(self, path: str) -> None:
        argv = ["findmnt", "--noheadings", "--output", "SOURCE", path]
        code, output = await run(argv, MOUNT_BUDGET_S)
        if code == 1:
            return  # not a mount point
        if code != 0:
            raise CommandError(argv, _status(code), output)
        if not output.strip():
            return
        code, output = await run(["umount", "--force", path], MOUNT_BUDGET_S)
        if code != 0:
            log.warning("forced NFS umount of %s failed, falling back to lazy", path)
            argv = ["umount", "--lazy", path]
            code, output = await asyncio.shield(run(argv, LAZY_UMOUNT_S))
            if code != 0:
                raise CommandError(argv, _status(code), output)
        self.mounted.pop(path, None)
