"""Firecracker's metadata service (MMDS, v2 token flow).

MMDS tells envd who it is (sandbox and template IDs), where to ship logs, and
the SHA-512 of the access token the orchestrator means to install with
`/init`. The address is configurable so tests can run a fake on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from envd import httpclient
from envd.host.nfs import run
from envd.logs import RateLimiter

DEFAULT_ADDRESS = "169.254.169.254:80"
TOKEN_TTL_S = 60
REQUEST_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
REFRESH_BUDGET_S = 60.0

log = logging.getLogger("envd.host.mmds")


class MMDSError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class MMDSOpts:
    sandbox_id: str = ""
    template_id: str = ""
    logs_collector_address: str = ""
    access_token_hash: str = ""


_KEYS = {
    "instanceid": "sandbox_id",
    "envid": "template_id",
    "address": "logs_collector_address",
    "accesstokenhash": "access_token_hash",
}


def parse_opts(body: bytes) -> MMDSOpts:
    try:
        data = json.loads(body)
    except ValueError as e:
        raise MMDSError(f"invalid MMDS JSON: {e}") from None
    if data is None:
        return MMDSOpts()
    if not isinstance(data, dict):
        raise MMDSError("MMDS metadata is not a JSON object")
    values: dict[str, str] = {}
    for key, value in data.items():
        field = _KEYS.get(key.lower())
        if field is None or value is None:
            continue
        if not isinstance(value, str):
            raise MMDSError(f"MMDS field {key} is not a string")
        values[field] = value
    return MMDSOpts(**values)


class MMDSClient:
    def __init__(self, address: str = DEFAULT_ADDRESS) -> None:
        self.address = address
        self.base = f"http://{address}"

    async def token(self) -> str:
        _status, body = await httpclient.request(
            "PUT",
            self.base + "/latest/api/token",
            [("X-metadata-token-ttl-seconds", str(TOKEN_TTL_S))],
            limit_s=REQUEST_TIMEOUT_S,
        )
        if not body:
            raise MMDSError("mmds token is an empty string")
        return body.decode("latin-1")

    async def opts(self) -> MMDSOpts:
        token = await self.token()
        _status, body = await httpclient.request(
            "GET",
            self.base + "/",
            [("X-metadata-token", token), ("Accept", "application/json")],
            limit_s=REQUEST_TIMEOUT_S,
        )
        return parse_opts(body)

    async def access_token_hash(self) -> str:
        return (await self.opts()).access_token_hash


class RoutePinner:
    """Re-pins the MMDS RETURN rule at the top of nat PREROUTING and OUTPUT.

    A user's own redirect of port 80 can shadow MMDS; `/init` calls this when
    the hash read fails, then retries once. Concurrent calls coalesce.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS) -> None:
        host, _, port = address.rpartition(":")
        self.rule = ["-d", host, "-p", "tcp", "--dport", port or "80", "-j", "RETURN"]
        self._running = False
        self._warn = RateLimiter(10.0)

    async def pin(self) -> None:
        if self._running:
            return
        self._running = True
        try:
            for chain in ("PREROUTING", "OUTPUT"):
                await self._iptables("-D", chain, *self.rule)  # absent on first run
                code, output = await self._iptables("-I", chain, "1", *self.rule)
                if code != 0:
                    raise MMDSError(f"iptables -I nat {chain}: exit status {code}: {output!r}")
        except (OSError, MMDSError) as e:
            allowed, suppressed = self._warn.allow()
            if allowed:
                log.warning(
                    "failed to pin MMDS iptables route: %s", e, extra={"suppressed": suppressed}
                )
        finally:
            self._running = False

    @staticmethod
    async def _iptables(*args: str) -> tuple[int, bytes]:
        return await run(["iptables", "-w", "5", "-t", "nat", *args], 15.0)


class MMDSPoller:
    """Reads MMDS every 50 ms until one read succeeds or the deadline passes.

    One poll runs at a time: start-up polls forever (Firecracker mode), each
    successful `/init` extends the deadline to 60 s from then. Upstream starts
    one poller per `/init`; under a retry storm that is a poller per attempt.
    """

    def __init__(
        self,
        client: MMDSClient,
        internal_envs: dict[str, str],
        run_dir: str,
        on_opts: Callable[[MMDSOpts], None] | None = None,
    ) -> None:
        self.client = client
        self.internal_envs = internal_envs
        self.run_dir = run_dir
        self.on_opts = on_opts
        self._deadline: float | None = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self, budget: float | None) -> None:
        """Poll until success, for `budget` seconds more (None: no deadline)."""
        deadline = None if budget is None else time.monotonic() + budget
        if self._task is None:
            self._deadline = deadline
            self._task = asyncio.create_task(self._poll())
        elif deadline is None or self._deadline is not None:
            self._deadline = deadline if deadline is None else max(self._deadline or 0, deadline)

    async def _poll(self) -> None:
        last_error: BaseException | None = None
        try:
            while True:
                await asyncio.sleep(POLL_INTERVAL_S)
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    suffix = f" (last error: {last_error})" if last_error else ""
                    sys.stderr.write(
                        f"<4>gave up polling for mmds opts: context deadline exceeded{suffix}\n"
                    )
                    return
                try:
                    opts = await self.client.opts()
                except (OSError, TimeoutError, httpclient.HTTPError, MMDSError) as e:
                    last_error = e
                    continue
                await self._apply(opts)
                return
        finally:
            self._task = None

    async def _apply(self, opts: MMDSOpts) -> None:
        self.internal_envs["E2B_SANDBOX_ID"] = opts.sandbox_id
        self.internal_envs["E2B_TEMPLATE_ID"] = opts.template_id
        await asyncio.to_thread(self._write_ids, opts)
        if opts.logs_collector_address and self.on_opts is not None:
            self.on_opts(opts)

    def _write_ids(self, opts: MMDSOpts) -> None:
        files = ((".E2B_SANDBOX_ID", opts.sandbox_id), (".E2B_TEMPLATE_ID", opts.template_id))
        for name, value in files:
            path = os.path.join(self.run_dir, name)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                with os.fdopen(fd, "w") as f:
                    f.write(value)
            except OSError as e:
                label = "sandbox" if "SANDBOX" in name else "template"
                sys.stderr.write(f"error writing {label} ID file: {e}\n")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
