"""The process service on the wire: raw Connect (JSON and binary), codes and messages."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.gen.process import process_pb2 as pb
from envd.gen.process.process_connect import ProcessClient
from envd.permissions.users import lookup_user, supplementary_groups
from tests.connect_raw import (
    PROCESS,
    envelope,
    parse_envelopes,
    raw_frames,
    stream_json,
    stream_proto,
    unary_json,
    unary_proto,
)
from tests.daemon import Daemon, wait_until
from tests.procfs import children, fd_count, state

DASH = "\u2014"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill -0; it is not running.
    return state(pid) not in ("", "Z")


def gone(pid: int) -> bool:
    return not alive(pid)


def live_pids(url: str) -> set[int]:
    r = unary_json(url, "List", {})
    assert r.status_code == 200
    return {p["pid"] for p in r.json().get("processes", [])}


def kill(url: str, pid: int) -> None:
    unary_json(url, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})


@pytest.fixture(autouse=True)
def no_leftovers(envd: Daemon) -> Iterator[None]:
    before = live_pids(envd.url)
    yield
    for pid in live_pids(envd.url) - before:
        kill(envd.url, pid)


def start_background(url: str, script: str, **extra: object) -> int:
    """Start `sh -c script` on a stream we abandon at once; returns the pid."""
    body = {"process": {"cmd": "/bin/sh", "args": ["-c", script]}, **extra}
    with httpx.stream(
        "POST",
        url + PROCESS + "Start",
        content=envelope(json.dumps(body).encode()),
        headers={"content-type": "application/connect+json"},
        timeout=30,
    ) as r:
        first = b""
        for chunk in r.iter_raw():
            first += chunk
            if len(first) >= 5 and len(first) >= 5 + int.from_bytes(first[1:5], "big"):
                break
    event = json.loads(parse_envelopes(first[: 5 + int.from_bytes(first[1:5], "big")])[0][1])
    return int(event["event"]["start"]["pid"])


def run_json(url: str, script: str, **extra: object) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return stream_json(
        url, "Start", {"process": {"cmd": "/bin/sh", "args": ["-c", script]}, **extra}
    )


def output_of(events: list[dict[str, Any]], member: str = "stdout") -> bytes:
    return b"".join(
        base64.b64decode(e["event"]["data"][member])
        for e in events
        if member in e["event"].get("data", {})
    )


# --- event sequence and end strings --------------------------------------------


def test_start_event_order_and_exit_zero_json(envd: Daemon) -> None:
    events, end = run_json(envd.url, "echo out; echo err >&2")
    assert end == {}
    assert "start" in events[0]["event"]
    assert events[-1]["event"]["end"] == {"exited": True, "status": "exit status 0"}
    assert output_of(events) == b"out\n"
    assert output_of(events, "stderr") == b"err\n"


@pytest.mark.parametrize(
    ("script", "end"),
    [
        ("exit 3", {"exitCode": 3, "exited": True, "status": "exit status 3",
                    "error": "exit status 3"}),
        ("kill -9 $$", {"exitCode": -1, "status": "signal: killed", "error": "signal: killed"}),
        ("kill -TERM $$", {"exitCode": -1, "status": "signal: terminated",
                           "error": "signal: terminated"}),
    ],
)  # fmt: skip
def test_end_event_strings(envd: Daemon, script: str, end: dict[str, Any]) -> None:
    events, _ = run_json(envd.url, script)
    assert events[-1]["event"]["end"] == end


def test_core_dump_status(envd: Daemon, tmp_path: Path) -> None:
    events, _ = stream_json(
        envd.url,
        "Start",
        {
            "process": {
                "cmd": "/bin/sh",
                "args": ["-c", "ulimit -c unlimited 2>/dev/null; kill -SEGV $$"],
                "cwd": str(tmp_path),
            }
        },
    )
    status = events[-1]["event"]["end"]["status"]
    if status == "signal: segmentation fault":
        pytest.skip("no core dump possible here (core_pattern/limits)")
    assert status == "signal: segmentation fault (core dumped)"


def test_binary_codec_events(envd: Daemon) -> None:
    request = pb.StartRequest(process=pb.ProcessConfig(cmd="/bin/echo", args=["hi"]))
    events, end = stream_proto(envd.url, "Start", request, pb.StartResponse)
    assert end == {}
    assert events[0].event.WhichOneof("event") == "start"
    assert events[0].event.start.pid > 0
    assert b"".join(e.event.data.stdout for e in events) == b"hi\n"
    last = events[-1].event.end
    assert (last.exit_code, last.exited, last.status, last.HasField("error")) == (
        0,
        True,
        "exit status 0",
        False,
    )


def test_missing_program_is_exit_127_not_rpc_error(envd: Daemon) -> None:
    events, end = stream_json(envd.url, "Start", {"process": {"cmd": "no-such-program-x"}})
    assert end == {}
    assert events[-1]["event"]["end"]["exitCode"] == 127
    assert b"no-such-program-x" in output_of(events, "stderr")


def test_one_mib_written_at_exit_is_delivered_exactly(envd: Daemon) -> None:
    script = "python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096)'"
    for _ in range(3):
        events, _ = run_json(envd.url, script)
        assert output_of(events) == bytes(range(256)) * 4096
        request = pb.StartRequest(process=pb.ProcessConfig(cmd="/bin/sh", args=["-c", script]))
        messages, _ = stream_proto(envd.url, "Start", request, pb.StartResponse)
        assert b"".join(m.event.data.stdout for m in messages) == bytes(range(256)) * 4096


def test_launch_wrapper_effects(envd: Daemon) -> None:
    events, _ = run_json(envd.url, "cat /proc/self/oom_score_adj; nice; echo $$")
    oom, nice, pid = output_of(events).split()
    assert (oom, nice) == (b"100", b"0")
    # sh, ionice and nice all exec in place: the reported pid is the command's.
    assert int(pid) == events[0]["event"]["start"]["pid"]


def test_environment_is_built_from_scratch(envd: Daemon) -> None:
    events, _ = stream_json(
        envd.url,
        "Start",
        {"process": {"cmd": "/usr/bin/env", "envs": {"FOO": "bar", "HOME": "/override"}}},
    )
    env = dict(line.split("=", 1) for line in output_of(events).decode().splitlines())
    assert env["FOO"] == "bar"
    assert env["HOME"] == "/override"  # request envs win
    assert env["USER"] == env["LOGNAME"] == "root"
    assert env["E2B_SANDBOX"] == "false"
    # PWD comes from the wrapper shell (dash exports it), as upstream.
    assert set(env) - {"PWD"} == {"PATH", "HOME", "USER", "LOGNAME", "E2B_SANDBOX", "FOO"}


# --- errors ------------------------------------------------------------------------


def err(r: httpx.Response) -> tuple[int, dict[str, Any]]:
    return r.status_code, r.json()


@pytest.mark.parametrize("method", ["Update", "SendInput", "SendSignal", "CloseStdin"])
def test_unknown_pid_and_tag(envd: Daemon, method: str) -> None:
    body: dict[str, Any] = {"process": {"pid": 999999}}
    if method == "SendSignal":
        body["signal"] = "SIGNAL_SIGKILL"
    assert err(unary_json(envd.url, method, body)) == (
        404,
        {"code": "not_found", "message": "process with pid 999999 not found"},
    )
    body["process"] = {"tag": "nope"}
    assert err(unary_json(envd.url, method, body)) == (
        404,
        {"code": "not_found", "message": "process with tag nope not found"},
    )
    del body["process"]
    assert err(unary_json(envd.url, method, body)) == (
        501,
        {"code": "unimplemented", "message": "invalid input type *process.ProcessSelector"},
    )
    body["process"] = {}
    assert unary_json(envd.url, method, body).json()["code"] == "unimplemented"


def test_connect_unknown_and_no_selector(envd: Daemon) -> None:
    events, end = stream_json(envd.url, "Connect", {"process": {"pid": 999999}})
    assert events == []
    assert end == {"error": {"code": "not_found", "message": "process with pid 999999 not found"}}
    _, end = stream_json(envd.url, "Connect", {})
    assert end["error"] == {
        "code": "unimplemented",
        "message": "invalid input type *process.ProcessSelector",
    }


def test_input_errors(envd: Daemon) -> None:
    pid = start_background(envd.url, "sleep 30", stdin=False)
    url = envd.url
    assert err(unary_json(url, "SendInput", {"process": {"pid": pid}, "input": {"stdin": "YQ=="}}))[
        1
    ] == {
        "code": "failed_precondition",
        "message": "error writing to stdin: stdin not enabled or closed",
    }
    assert err(unary_json(url, "SendInput", {"process": {"pid": pid}, "input": {"pty": "YQ=="}}))[
        1
    ] == {
        "code": "failed_precondition",
        "message": "error writing to tty: tty not assigned to process "
        f"{DASH} input should be written to the stdin, not the tty",
    }
    assert err(unary_json(url, "SendInput", {"process": {"pid": pid}})) == (
        501,
        {"code": "unimplemented", "message": "invalid input type <nil>"},
    )
    resize = {"process": {"pid": pid}, "pty": {"size": {"cols": 10, "rows": 10}}}
    assert err(unary_json(url, "Update", resize)) == (
        500,
        {"code": "internal", "message": "error resizing tty: tty not assigned to process"},
    )
    # Update without pty is a no-op success; CloseStdin with stdin disabled too.
    assert unary_json(url, "Update", {"process": {"pid": pid}}).status_code == 200
    assert unary_json(url, "CloseStdin", {"process": {"pid": pid}}).status_code == 200
    for value, name in (("SIGNAL_UNSPECIFIED", "SIGNAL_UNSPECIFIED"), (2, "2")):
        r = unary_json(url, "SendSignal", {"process": {"pid": pid}, "signal": value})
        assert err(r) == (501, {"code": "unimplemented", "message": f"invalid signal: {name}"})


def test_pty_input_errors(envd: Daemon) -> None:
    pid = start_background(envd.url, "sleep 30", pty={"size": {"cols": 80, "rows": 24}})
    r = unary_json(envd.url, "SendInput", {"process": {"pid": pid}, "input": {"stdin": "YQ=="}})
    assert r.json() == {
        "code": "failed_precondition",
        "message": "error writing to stdin: tty assigned to process "
        f"{DASH} input should be written to the pty, not the stdin",
    }
    r = unary_json(envd.url, "CloseStdin", {"process": {"pid": pid}})
    assert err(r) == (
        400,
        {
            "code": "failed_precondition",
            "message": "error closing stdin: cannot close stdin for PTY process "
            f"{DASH} send Ctrl+D (0x04) instead",
        },
    )


def test_stdin_write_after_reader_exited(envd: Daemon) -> None:
    pid = start_background(envd.url, "exec 0<&-; sleep 30")
    time.sleep(0.3)
    r = unary_json(envd.url, "SendInput", {"process": {"pid": pid}, "input": {"stdin": "YQ=="}})
    assert r.json() == {
        "code": "failed_precondition",
        "message": "error writing to stdin: error writing to stdin of process "
        f"'{pid}': write |1: broken pipe",
    }


@pytest.mark.parametrize(
    ("process", "message"),
    [
        ({"cwd": "/nonexistent-dir"}, "cwd '/nonexistent-dir' does not exist"),
        (
            {"cwd": "~bob/x"},
            "failed to expand path '~bob/x' for user 'root': cannot expand user-specific home dir",
        ),
        ({"cwd": "/etc/passwd"}, "error starting process '/bin/true': fork/exec /bin/sh: "
                                 "not a directory"),
        ({"envs": {"A": "x\u0000y"}}, "error starting process '/bin/true': "
                                      "exec: environment variable contains NUL"),
        ({"args": ["a\u0000b"]}, "error starting process '/bin/true a\u0000b': "
                                 "fork/exec /bin/sh: invalid argument"),
    ],
)  # fmt: skip
def test_start_invalid_argument(envd: Daemon, process: dict[str, Any], message: str) -> None:
    events, end = stream_json(envd.url, "Start", {"process": {"cmd": "/bin/true", **process}})
    assert events == []
    assert end == {"error": {"code": "invalid_argument", "message": message}}


def test_cwd_not_enterable_by_user_is_permission_denied(envd: Daemon, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    headers = {"authorization": "Basic " + base64.b64encode(b"user:").decode()}
    _, end = stream_json(
        envd.url, "Start", {"process": {"cmd": "/bin/true", "cwd": str(private)}}, headers
    )
    assert end["error"] == {
        "code": "invalid_argument",
        "message": "error starting process '/bin/true': fork/exec /bin/sh: permission denied",
    }


def test_pty_spawn_error_message(envd: Daemon) -> None:
    _, end = stream_json(
        envd.url,
        "Start",
        {"process": {"cmd": "/bin/true", "cwd": "/etc/passwd"}, "pty": {"size": {"cols": 70000}}},
    )
    assert end["error"] == {
        "code": "invalid_argument",
        "message": "error starting pty with command '/bin/true' in dir '/etc/passwd' with "
        "'70000' cols and '0' rows: fork/exec /bin/sh: not a directory",
    }


def test_unknown_basic_auth_user(envd: Daemon) -> None:
    headers = {"authorization": "Basic " + base64.b64encode(b"nobody-x:").decode()}
    _, end = stream_json(envd.url, "Start", {"process": {"cmd": "/bin/true"}}, headers)
    assert end["error"] == {"code": "unauthenticated", "message": "invalid username: 'nobody-x'"}


def test_unknown_method_is_404(envd: Daemon) -> None:
    r = unary_json(envd.url, "Nope", {})
    assert r.status_code == 404


def test_oversized_and_malformed_envelopes(envd: Daemon) -> None:
    big = json.dumps({"process": {"cmd": "/bin/true", "args": ["x" * (5 << 20)]}}).encode()
    r = httpx.post(
        envd.url + PROCESS + "Start",
        content=envelope(big),
        headers={"content-type": "application/connect+json"},
        timeout=30,
    )
    end = json.loads(parse_envelopes(r.content)[-1][1])
    assert end["error"]["code"] == "resource_exhausted"
    # Truncated envelope: header announces more than is sent.
    r = httpx.post(
        envd.url + PROCESS + "Start",
        content=b"\x00\x00\x00\x01\x00{}",
        headers={"content-type": "application/connect+json"},
        timeout=30,
    )
    end = json.loads(parse_envelopes(r.content)[-1][1])
    # connectrpc reports a missing message as `unimplemented` (connect-go: invalid_argument).
    assert end["error"]["code"] in ("invalid_argument", "unimplemented")
    # Not JSON at all.
    r = httpx.post(
        envd.url + PROCESS + "List",
        content=b"{nope",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"
    assert r.json()["message"].startswith("unmarshal into *process.ListRequest: ")
    # The daemon is still fine.
    assert unary_json(envd.url, "List", {}).status_code == 200


@pytest.mark.parametrize(
    ("content_type", "payload"),
    [
        ("application/connect+json", b'{"process":{"cmd":'),
        ("application/connect+json", b'{"process":{"cmd":7}}'),
        ("application/connect+proto", b"\x0a\x05\x0a\x10"),  # length past the end
        ("application/connect+proto", b"\xff\xff\xff"),
    ],
)
def test_undecodable_stream_request_is_invalid_argument(
    envd: Daemon, content_type: str, payload: bytes
) -> None:
    r = httpx.post(
        envd.url + PROCESS + "Start",
        content=envelope(payload),
        headers={"content-type": content_type},
        timeout=30,
    )
    frames = parse_envelopes(r.content)
    assert [flags for flags, _ in frames] == [2]  # no start event: nothing was spawned
    error = json.loads(frames[0][1])["error"]
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith("unmarshal into *process.StartRequest: ")
    # A bad request is the caller's fault, not a crash worth a traceback.
    assert "Traceback" not in envd.output()


def test_undecodable_unary_proto_is_400(envd: Daemon) -> None:
    r = httpx.post(
        envd.url + PROCESS + "SendSignal",
        content=b"\x0a\x7f",
        headers={"content-type": "application/proto"},
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"
    assert "Traceback" not in envd.output()


def test_gzip_requests(envd: Daemon) -> None:
    r = httpx.post(
        envd.url + PROCESS + "List",
        content=gzip.compress(b"{}"),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        timeout=30,
    )
    assert r.status_code == 200
    body = json.dumps({"process": {"cmd": "/bin/echo", "args": ["zipped"]}}).encode()
    r = httpx.post(
        envd.url + PROCESS + "Start",
        content=envelope(gzip.compress(body), flags=1),
        headers={
            "content-type": "application/connect+json",
            "connect-content-encoding": "gzip",
        },
        timeout=30,
    )
    frames = parse_envelopes(r.content)
    events = [json.loads(p) for f, p in frames if f == 0]
    assert output_of(events) == b"zipped\n"


# --- streams -----------------------------------------------------------------------


def test_keepalive_interval(envd: Daemon) -> None:
    events, end = stream_json(
        envd.url,
        "Start",
        {"process": {"cmd": "/bin/sleep", "args": ["3.5"]}},
        {"keepalive-ping-interval": "1"},
    )
    keepalives = [e for e in events if "keepalive" in e["event"]]
    assert 2 <= len(keepalives) <= 4
    assert end == {}


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5"])
def test_bad_keepalive_header_is_default(envd: Daemon, value: str) -> None:
    events, end = stream_json(
        envd.url,
        "Start",
        {"process": {"cmd": "/bin/sleep", "args": ["1.2"]}},
        {"keepalive-ping-interval": value},
    )
    assert end == {}
    assert not [e for e in events if "keepalive" in e["event"]]


def test_start_deadline_kills_process(envd: Daemon) -> None:
    started = time.monotonic()
    events, end = stream_json(
        envd.url,
        "Start",
        {"process": {"cmd": "/bin/sleep", "args": ["30"]}},
        {"connect-timeout-ms": "700"},
    )
    assert time.monotonic() - started < 10
    assert end == {"error": {"code": "deadline_exceeded", "message": "context deadline exceeded"}}
    pid = events[0]["event"]["start"]["pid"]
    assert wait_until(lambda: not alive(pid))
    assert wait_until(lambda: pid not in live_pids(envd.url))
    # Late Connect still learns how it ended.
    events, end = stream_json(envd.url, "Connect", {"process": {"pid": pid}})
    assert [list(e["event"]) for e in events] == [["start"], ["end"]]
    assert events[1]["event"]["end"]["status"] == "signal: killed"


def test_connect_deadline_does_not_kill(envd: Daemon) -> None:
    pid = start_background(envd.url, "sleep 30")
    _, end = stream_json(
        envd.url, "Connect", {"process": {"pid": pid}}, {"connect-timeout-ms": "300"}
    )
    assert end["error"]["code"] == "deadline_exceeded"
    assert alive(pid)
    assert pid in live_pids(envd.url)


def test_retained_exit_for_late_connect_and_tags(envd: Daemon) -> None:
    events, _ = run_json(envd.url, "exit 4", tag="late-tag")
    pid = events[0]["event"]["start"]["pid"]
    for selector in ({"pid": pid}, {"tag": "late-tag"}):
        got, end = stream_json(envd.url, "Connect", {"process": selector})
        assert end == {}
        assert got[0]["event"]["start"]["pid"] == pid
        assert got[1]["event"]["end"]["exitCode"] == 4
    # Only Connect falls back to retained exits.
    r = unary_json(envd.url, "SendSignal", {"process": {"pid": pid}, "signal": 9})
    assert r.json()["code"] == "not_found"


def test_tag_selection_with_several_tags(envd: Daemon) -> None:
    pids = {tag: start_background(envd.url, "sleep 30", tag=tag) for tag in "abcde"}
    start_background(envd.url, "sleep 30")  # untagged
    listed = unary_json(envd.url, "List", {}).json()["processes"]
    assert {p.get("tag") for p in listed if p["pid"] in pids.values()} == set("abcde")
    for tag, pid in pids.items():
        r = unary_json(envd.url, "SendSignal", {"process": {"tag": tag}, "signal": 9})
        assert r.status_code == 200, r.text
        assert wait_until(partial(gone, pid))


def test_list_shows_config_as_given(envd: Daemon) -> None:
    pid = start_background(envd.url, "sleep 30", tag="cfg")
    listed = {p["pid"]: p for p in unary_json(envd.url, "List", {}).json()["processes"]}
    assert listed[pid] == {
        "pid": pid,
        "tag": "cfg",
        "config": {"cmd": "/bin/sh", "args": ["-c", "sleep 30"]},
    }


def test_stream_input(envd: Daemon) -> None:
    pid = start_background(envd.url, "cat")

    def messages(*items: dict[str, Any]) -> bytes:
        return b"".join(envelope(json.dumps(m).encode()) for m in items)

    url = envd.url + PROCESS + "StreamInput"
    headers = {"content-type": "application/connect+json"}
    body = messages({"data": {"input": {"stdin": "YQ=="}}})
    frames = parse_envelopes(httpx.post(url, content=body, headers=headers).content)
    assert json.loads(frames[-1][1])["error"]["code"] == "failed_precondition"
    body = messages({"start": {"process": {"pid": pid}}}, {"keepalive": {}}, {})
    frames = parse_envelopes(httpx.post(url, content=body, headers=headers).content)
    assert json.loads(frames[-1][1])["error"] == {
        "code": "unimplemented",
        "message": "invalid event type <nil>",
    }
    body = messages(
        {"start": {"process": {"pid": pid}}},
        {"data": {"input": {"stdin": base64.b64encode(b"streamed\n").decode()}}},
    )
    frames = parse_envelopes(httpx.post(url, content=body, headers=headers).content)
    assert json.loads(frames[-1][1]) == {}
    unary_json(envd.url, "CloseStdin", {"process": {"pid": pid}})
    events, _ = stream_json(envd.url, "Connect", {"process": {"pid": pid}})
    assert events[-1]["event"]["end"]["status"] == "exit status 0"


async def test_connectrpc_client_binary_and_json(envd: Daemon) -> None:
    async with ProcessClient(envd.url) as client:
        events = [
            r.event
            async for r in client.start(
                pb.StartRequest(process=pb.ProcessConfig(cmd="/bin/echo", args=["rpc"]))
            )
        ]
        assert b"".join(e.data.stdout for e in events) == b"rpc\n"
        assert events[-1].end.status == "exit status 0"
        with pytest.raises(ConnectError) as info:
            await client.send_signal(
                pb.SendSignalRequest(
                    process=pb.ProcessSelector(pid=999999), signal=pb.SIGNAL_SIGKILL
                )
            )
        assert info.value.code == Code.NOT_FOUND
        assert info.value.message == "process with pid 999999 not found"
        with pytest.raises(ConnectError) as info:
            async for _ in client.connect(pb.ConnectRequest()):
                pass
        assert info.value.code == Code.UNIMPLEMENTED


def test_binary_unary_errors(envd: Daemon) -> None:
    r = unary_proto(envd.url, "CloseStdin", pb.CloseStdinRequest(process=pb.ProcessSelector(pid=1)))
    assert r.status_code == 404
    assert r.json() == {"code": "not_found", "message": "process with pid 1 not found"}


# --- improvements and resource hygiene ---------------------------------------------


def test_signal_reaches_the_whole_process_group(envd: Daemon, tmp_path: Path) -> None:
    # Upstream leaves `sleep` running here (E2B issues #1034, #1389).
    marker = tmp_path / "child"
    pid = start_background(
        envd.url, f"sleep 100 & echo $! > {marker}.tmp; mv {marker}.tmp {marker}; wait"
    )
    assert wait_until(marker.exists)
    child = int(marker.read_text())
    assert alive(child)
    r = unary_json(envd.url, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
    assert r.status_code == 200
    assert wait_until(lambda: not alive(child))
    assert wait_until(lambda: not alive(pid))


def test_kill_reaps_at_once(envd: Daemon) -> None:
    pid = start_background(envd.url, "sleep 30")
    unary_json(envd.url, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
    # No subscriber: still reaped promptly (kill -0 fails, not even a zombie).
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5)


def test_disconnect_mid_stream_leaks_nothing(envd: Daemon) -> None:
    # Warm up: first requests create lazily made objects.
    run_json(envd.url, "true")
    base_fds = fd_count(envd.pid)
    base_children = children(envd.pid)
    for _ in range(5):
        with httpx.stream(
            "POST",
            envd.url + PROCESS + "Start",
            content=envelope(json.dumps({"process": {"cmd": "/usr/bin/yes"}}).encode()),
            headers={"content-type": "application/connect+json"},
            timeout=30,
        ) as r:
            got = 0
            for chunk in r.iter_raw():
                got += len(chunk)
                if got > 1 << 20:
                    break
    # Disconnecting never kills: the processes are still there.
    pids = live_pids(envd.url)
    assert len(pids) >= 5
    for pid in pids:
        assert alive(pid)
        kill(envd.url, pid)
    assert wait_until(lambda: children(envd.pid) == base_children)
    assert wait_until(lambda: fd_count(envd.pid) <= base_fds), (fd_count(envd.pid), base_fds)


def test_slow_subscriber_does_not_stall_fast_one(envd: Daemon, tmp_path: Path) -> None:
    # Output starts only once both subscribers are attached (output read with no
    # subscriber is discarded, so an early start would make the count flaky).
    go = tmp_path / "go"
    pid = start_background(
        envd.url, f"while [ ! -e {go} ]; do sleep 0.02; done; head -c 40000000 /dev/zero"
    )
    # A client that never reads, with a tiny receive buffer.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", envd.port))
    body = envelope(json.dumps({"process": {"pid": pid}}).encode())
    slow.sendall(
        b"POST /process.Process/Connect HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/connect+json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        slow.settimeout(30)
        head = b""
        while b'{"event":{"start"' not in head:  # subscribed: its start event was sent
            head += slow.recv(4096)
        started = time.monotonic()
        total = 0
        with httpx.stream(
            "POST",
            envd.url + PROCESS + "Connect",
            content=envelope(json.dumps({"process": {"pid": pid}}).encode()),
            headers={"content-type": "application/connect+json"},
            timeout=60,
        ) as r:
            frames = raw_frames(r)
            assert next(frames) == (0, b'{"event":{"start":{"pid":%d}}}' % pid)
            go.touch()
            for flags, payload in frames:
                if flags & 2:
                    assert json.loads(payload) == {}
                    break
                event = json.loads(payload)["event"]
                if "data" in event:
                    total += len(base64.b64decode(event["data"]["stdout"]))
        assert total == 40_000_000
        assert time.monotonic() - started < 60
        # The slow client was cut off with a clear error once it held up the other.
        received = head
        while b"aborted" not in received:
            chunk = slow.recv(1 << 20)
            if not chunk:
                break
            received += chunk
        assert b'"aborted"' in received
        assert b"this stream was detached from the process" in received
    finally:
        slow.close()


def test_sigterm_with_open_streams_stops_daemon_fast() -> None:
    daemon = Daemon().start()
    try:
        pid = start_background(daemon.url, "sleep 60")
        client = httpx.Client(timeout=30)
        with client.stream(
            "POST",
            daemon.url + PROCESS + "Connect",
            content=envelope(json.dumps({"process": {"pid": pid}}).encode()),
            headers={"content-type": "application/connect+json"},
        ) as r:
            next(r.iter_raw())
            started = time.monotonic()
            assert daemon.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
            assert time.monotonic() - started < 2.5
        # Like upstream, children outlive the daemon.
        assert alive(pid)
        os.killpg(pid, signal.SIGKILL)  # its own group (ours, not upstream's)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()


def test_client_gone_before_start_event_still_registers_the_process(envd: Daemon) -> None:
    """As upstream: a Start whose client left during the spawn still runs and is listed."""
    tag = f"left-early-{os.getpid()}-{time.monotonic_ns()}"
    body = json.dumps({"process": {"cmd": "/bin/sleep", "args": ["30"]}, "tag": tag}).encode()
    request = (
        b"POST /process.Process/Start HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/connect+json\r\n"
        + f"Content-Length: {len(body) + 5}\r\n\r\n".encode()
        + envelope(body)
    )
    base_fds = fd_count(envd.pid)
    with socket.create_connection(("127.0.0.1", envd.port)) as sock:
        sock.sendall(request)
    # The connection is closed before any event could be read.

    def tagged() -> list[dict[str, object]]:
        listed = unary_json(envd.url, "List", {}).json().get("processes", [])
        return [p for p in listed if p.get("tag") == tag]

    assert wait_until(lambda: len(tagged()) == 1)
    pid = int(tagged()[0]["pid"])  # type: ignore[call-overload]
    assert alive(pid)
    r = unary_json(envd.url, "SendSignal", {"process": {"tag": tag}, "signal": "SIGNAL_SIGKILL"})
    assert r.status_code == 200
    assert wait_until(lambda: not alive(pid) and not tagged())
    # Nothing of the abandoned stream stays behind.
    assert wait_until(lambda: fd_count(envd.pid) <= base_fds), (fd_count(envd.pid), base_fds)


def test_user_child_ids_directory_environment_and_signals(envd: Daemon) -> None:
    """What a child started for another user sees, as after upstream's fork/exec."""
    user = lookup_user("user")
    expected_groups = sorted(set(supplementary_groups(user, int(user.gid))))
    base = Path(tempfile.mkdtemp(prefix="envd-cwd-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "real").mkdir(mode=0o755)
        (base / "link").symlink_to(base / "real")
        script = (
            "id -u; id -g; id -G; pwd -P; echo \"$PWD\"; env | grep -c '^OLDPWD=' || true;"
            " yes | head -c 3; echo"
        )
        headers = {"authorization": "Basic " + base64.b64encode(b"user:").decode()}
        events, end = stream_json(
            envd.url,
            "Start",
            {"process": {"cmd": "/bin/sh", "args": ["-c", script], "cwd": str(base / "link")}},
            headers,
        )
        assert end == {}
        lines = output_of(events).decode().splitlines()
        assert lines[0] == user.uid
        assert lines[1] == user.gid
        assert sorted(int(g) for g in lines[2].split()) == expected_groups
        # The shell started there exports the physical path; no OLDPWD appears.
        assert lines[3:6] == [str(base / "real"), str(base / "real"), "0"]
        # SIGPIPE is back to its default for children (Python ignores it): `yes` just dies.
        assert lines[6:8] == ["y", "y"]
        assert output_of(events, "stderr") == b""
    finally:
        shutil.rmtree(base)
