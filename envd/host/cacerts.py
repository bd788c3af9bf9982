"""Installing the orchestrator's CA bundle into the system trust store.

The request path only appends to the bundle (a tmpfs file in a real
sandbox); persisting the PEM for `update-ca-certificates` and removing the
previously installed PEM run in the background, under the same lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile

from envd.fs.errors import errno_text

CA_BUNDLE_PATH = "/etc/ssl/certs/ca-certificates.crt"
CA_EXTRA_PATH = "/usr/local/share/ca-certificates/e2b-ca.crt"

log = logging.getLogger("envd.host.cacerts")


class CAInstallError(Exception):
    """The foreground append failed; the message is upstream's text."""


class CAInstallInProgress(Exception):
    """The request went away while a previous install still held the lock."""


class CACertInstaller:
    def __init__(self, bundle_path: str = CA_BUNDLE_PATH, extra_path: str = CA_EXTRA_PATH) -> None:
        self.bundle_path = bundle_path
        self.extra_path = extra_path
        self._lock = asyncio.Lock()
        # The PEM installed last by this process: an unchanged bundle on resume
        # costs no I/O at all.
        self._last = ""
        self._tasks: set[asyncio.Task[None]] = set()

    async def install(self, pem: str, cancelled: asyncio.Event | None = None) -> None:
        """Append `pem`; raises CAInstallError or CAInstallInProgress."""
        if not pem:
            return
        normalized = pem.rstrip("\n") + "\n"
        await _acquire(self._lock, cancelled)
        try:
            if self._last == normalized:
                return
            previous = self._last
            await asyncio.to_thread(_append, self.bundle_path, normalized)
            self._last = normalized
        finally:
            self._lock.release()
        task = asyncio.create_task(self._cleanup(normalized, previous))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cleanup(self, installed: str, previous: str) -> None:
        async with self._lock:
            if self._last != installed:
                return  # a newer install owns the clean-up
            try:
                await asyncio.to_thread(_persist, self.extra_path, installed)
            except OSError as e:
                log.error("failed to write CA cert to extra dir: %s", e)
            if not previous:
                return
            try:
                await asyncio.to_thread(_remove_from_bundle, self.bundle_path, previous)
            except OSError as e:
                log.error("failed to remove old CA cert from bundle: %s", e)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _acquire(lock: asyncio.Lock, cancelled: asyncio.Event | None) -> None:
    if cancelled is None:
        await lock.acquire()
        return
    acquire = asyncio.ensure_future(lock.acquire())
    gone = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if acquire.done() and not acquire.cancelled():
        return
    acquire.cancel()
    try:
        await acquire
    except asyncio.CancelledError:
        raise CAInstallInProgress("CA install already in progress: context canceled") from None
    lock.release()  # acquired in the same instant the client left
    raise CAInstallInProgress("CA install already in progress: context canceled")


def _append(path: str, pem: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        raise CAInstallError(f"open CA bundle: open {path}: {errno_text(e.errno)}") from None
    try:
        os.write(fd, pem.encode())
    except OSError as e:
        raise CAInstallError(f"append CA cert: write {path}: {errno_text(e.errno)}") from None
    finally:
        os.close(fd)


def _persist(path: str, pem: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "w") as f:
        f.write(pem)
    os.chmod(path, 0o644)


def _remove_from_bundle(path: str, pem: str) -> None:
    """Rewrite the bundle without `pem`, atomically (temp file + rename, same directory)."""
    with open(path) as f:
        cleaned = f.read().replace(pem, "")
    fd, tmp = tempfile.mkstemp(prefix="ca-bundle-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(cleaned)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
