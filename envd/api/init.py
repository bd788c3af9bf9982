"""`POST /init`: the orchestrator configures the sandbox, after every start and resume.

It is retried every few milliseconds until it answers, so nothing here may
block the loop, and the only lock it waits for is its own (never one a stream
holds). Token rules: http-api.md §5.3.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from envd import ENVD_VERSION, httpclient
from envd.api.init_request import InitBodyError, InitRequest, parse_init_body
from envd.api.responses import go_json, json_error
from envd.api.store import ControlPlane
from envd.asgi import Receive
from envd.host import clock
from envd.host.cacerts import CAInstallError, CAInstallInProgress
from envd.host.freezer import WorkloadFreezer, acquire_before
from envd.host.hosts import rewrite_hosts_file
from envd.host.mmds import MMDSError
from envd.host.nfs import NFSError
from envd.logs import operation_id

TOKEN_MISMATCH = "access token validation failed"
# The token travels inside the body, so the body is read before it can be
# checked: bounded, so that an unauthenticated client cannot make envd hold
# more (upstream has no bound). A CA bundle is ~200 KiB, a thousand envVars
# ~100 KiB; parsing 1 MiB of JSON costs at most a few tens of MiB.
MAX_INIT_BODY = 1 << 20
TOO_LARGE = f"request body larger than {MAX_INIT_BODY} bytes"
RESET_NOT_AUTHORIZED = "access token reset not authorized"
REFRESH_BUDGET_S = 60.0

log = logging.getLogger("envd.api.init")


class SettingsError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _answer(status: int, body: str = "", **headers: str) -> Response:
    headers["X-Envd-Version"] = ENVD_VERSION
    # Go sniffs a written body as text/plain; a bare status has no type.
    media = "text/plain; charset=utf-8" if body else None
    return Response(body, status_code=status, headers=headers, media_type=media)


async def post_init(request: Request) -> Response:
    cp: ControlPlane = request.app.state.control
    response = await _post_init(request, cp)
    if cp.handover.result is not None:
        response.headers["X-Envd-Handover"] = cp.handover.result.header()
    return response


async def _post_init(request: Request, cp: ControlPlane) -> Response:
    op = operation_id()
    try:
        body = await _read_body(request)
    except ClientDisconnect:
        return _answer(400)
    if body is None:
        log.error("init: %s", TOO_LARGE, extra={"operation_id": op})
        return json_error(413, TOO_LARGE, {"X-Envd-Version": ENVD_VERSION, "Connection": "close"})
    try:
        data = parse_init_body(body) if body else InitRequest()
    except InitBodyError as e:
        log.error("failed to decode request: %s", e, extra={"operation_id": op})
        return _answer(400)

    gone = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(request.receive, gone))
    try:
        if not await acquire_before(cp.init_lock, gone):
            return _answer(503)
        try:
            denied = await validate_token(cp, data.access_token)
            if denied is not None:
                log.error("init: %s", denied, extra={"operation_id": op})
                return _answer(401, denied)
            freezer: WorkloadFreezer = request.app.state.freezer
            audit = await _audit_header(freezer)
            try:
                ts = data.timestamp_ns
                if ts is None or cp.last_set_time is None or ts >= cp.last_set_time:
                    if ts is not None:
                        cp.last_set_time = ts
                    try:
                        await apply_settings(cp, data, gone, op)
                    except SettingsError as e:
                        log.error("failed to set data: %s", e, extra={"operation_id": op})
                        return _answer(e.status, str(e), **audit)
                cp.initialized = True
            finally:
                # The resume thaw, on success and failure, before the answer leaves.
                await _thaw(freezer, op)
                # After a live upgrade: the carried timeouts start now.
                await cp.handover.thaw_now()
        finally:
            cp.init_lock.release()
    finally:
        watcher.cancel()
    cp.poller.start(REFRESH_BUDGET_S)
    return _answer(204, **{"Cache-Control": "no-store"}, **audit)


async def _audit_header(freezer: WorkloadFreezer) -> dict[str, str]:
    """`X-Envd-Freeze-Audit` after a hierarchy freeze (http-api.md §5.2 step 5)."""
    res = await freezer.audit()
    if res is None:
        return {}
    if res.truncated:
        log.warning("freeze audit hit its bound; counts are floors")
    return {"X-Envd-Freeze-Audit": go_json(res.header()).decode()}


async def _thaw(freezer: WorkloadFreezer, op: str) -> None:
    # Shielded: a client that gives up must not leave the workload frozen.
    res = await asyncio.shield(freezer.thaw())
    if res.errors:
        log.warning(
            "unfreeze workload cgroups: %s", "; ".join(res.errors), extra={"operation_id": op}
        )


async def _read_body(request: Request) -> bytes | None:
    """The whole body, or None once it exceeds MAX_INIT_BODY (not read further)."""
    declared = request.headers.get("content-length", "").strip(" \t")
    # Length checked first: int() refuses more than 4300 digits.
    digits = declared.isascii() and declared.isdigit()
    if digits and (len(declared) > 9 or int(declared) > MAX_INIT_BODY):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_INIT_BODY:
            return None
    return bytes(body)


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    # The body has been read, so the next message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


def _sha512_hex(token: str) -> str:
    return hashlib.sha512(token.encode()).hexdigest()


async def validate_token(cp: ControlPlane, requested: str | None) -> str | None:
    """None when this /init may proceed, else the 401 text."""
    if requested is not None and cp.access_token.equals(requested):
        return None
    matches, mmds_exists = await _check_mmds_hash(cp, requested)
    if matches:
        return None
    if not cp.access_token.is_set() and not mmds_exists:
        return None  # first-time setup
    if requested is None:
        return RESET_NOT_AUTHORIZED
    return TOKEN_MISMATCH


async def _check_mmds_hash(cp: ControlPlane, requested: str | None) -> tuple[bool, bool]:
    """(the request matches the MMDS hash, MMDS holds a hash)."""
    if cp.config.is_not_fc:
        return False, False
    try:
        expected = await cp.mmds.access_token_hash()
    except (OSError, TimeoutError, httpclient.HTTPError, MMDSError):
        await cp.pinner.pin()
        try:
            expected = await cp.mmds.access_token_hash()
        except (OSError, TimeoutError, httpclient.HTTPError, MMDSError) as e:
            log.warning("reading the access token hash from MMDS failed: %s", e)
            return False, False
    if not expected:
        return False, False
    actual = _sha512_hex(requested or "")
    return hmac.compare_digest(actual.encode(), expected.encode("utf-8", "replace")), True


async def apply_settings(cp: ControlPlane, data: InitRequest, gone: asyncio.Event, op: str) -> None:
    """http-api.md §5.4, in order; raises SettingsError (earlier steps stay applied)."""
    extra = {"operation_id": op}
    if data.timestamp_ns is not None and clock.should_set_system_time(
        time.time_ns(), data.timestamp_ns
    ):
        try:
            cp.set_system_time(data.timestamp_ns)
        except OSError as e:
            log.error("failed to set system time: %s", e, extra=extra)

    envs = cp.exec_ctx
    if data.env_vars is not None:
        # Names only: values may be secrets.
        names = ", ".join(data.env_vars)
        log.debug("setting %d env vars: %s", len(data.env_vars), names, extra=extra)
        user = {k: v for k, v in data.env_vars.items() if k not in envs.internal_envs}
        envs.user_envs.clear()
        envs.user_envs.update(user)

    if data.access_token is not None:
        cp.access_token.set(data.access_token)
    elif cp.access_token.is_set():
        log.debug("clearing access token", extra=extra)
        cp.access_token.clear()

    if data.hyperloop_ip is not None:
        cp.spawn(setup_hyperloop(cp, data.hyperloop_ip))

    if data.default_user:
        envs.default_user = data.default_user
    if data.default_workdir:
        envs.default_workdir = data.default_workdir

    if data.ca_bundle:
        try:
            await cp.ca.install(data.ca_bundle, gone)
        except CAInstallInProgress as e:
            raise SettingsError(503, str(e)) from None
        except CAInstallError as e:
            raise SettingsError(400, f"failed to install CA bundle: {e}") from None

    if data.volume_mounts is not None:
        try:
            await cp.nfs.setup(data.volume_mounts, data.lifecycle_id)
        except NFSError as e:
            raise SettingsError(400, f"failed to setup NFS volumes: {e}") from None


async def setup_hyperloop(cp: ControlPlane, address: str) -> None:
    """Point events.e2b.local at the address, then publish E2B_EVENTS_ADDRESS."""
    async with cp.hosts_lock:
        try:
            ipaddress.ip_address(address)
            await asyncio.to_thread(rewrite_hosts_file, address, cp.config.hosts_path)
        except (ValueError, OSError) as e:
            log.error("failed to modify hosts file: %s", e)
            return
        cp.exec_ctx.internal_envs["E2B_EVENTS_ADDRESS"] = f"http://{address}"
