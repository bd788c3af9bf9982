"""The `/init` body decoder on its own (envd/api/init_request.py), by Go's rules.

Upstream decodes into a struct of pointer fields with encoding/json: keys match
case-insensitively and the last one wins, `null` leaves a field absent, a value
of the wrong type fails the whole body, and the access token refuses an empty
string or any escape sequence (spec http-api §5.1). tests/test_init.py checks
the same through a daemon; these pin the decoder's edges without one.
"""

from __future__ import annotations

import datetime

import pytest

from envd.api.init_request import InitBodyError, InitRequest, parse_init_body, parse_rfc3339_ns
from envd.host.nfs import VolumeMount


def unix_ns(utc: str, nanos: int = 0) -> int:
    """`utc` ("YYYY-MM-DD HH:MM:SS") in Unix nanoseconds, by the standard library."""
    moment = datetime.datetime.fromisoformat(utc).replace(tzinfo=datetime.UTC)
    return int(moment.timestamp()) * 1_000_000_000 + nanos


@pytest.mark.parametrize("body", [b"{}", b"null", b" \r\n\t{} \n", b'{"unknown": {"x": [1]}}'])
def test_empty_bodies_set_nothing(body: bytes) -> None:
    assert parse_init_body(body) == InitRequest()


def test_every_field() -> None:
    body = b"""{
        "accessToken": "0123abcd",
        "timestamp": "2024-01-02T03:04:05.123456789Z",
        "envVars": {"A": "1", "B": ""},
        "defaultUser": "user",
        "defaultWorkdir": "/home/user",
        "caBundle": "-----BEGIN CERTIFICATE-----",
        "volumeMounts": [{"nfs_target": "10.0.0.1:/export", "path": "/mnt/v"}],
        "lifecycleID": "life-1",
        "hyperloopIP": "10.0.0.2"
    }"""
    assert parse_init_body(body) == InitRequest(
        access_token="0123abcd",
        timestamp_ns=unix_ns("2024-01-02 03:04:05", nanos=123_456_789),
        env_vars={"A": "1", "B": ""},
        default_user="user",
        default_workdir="/home/user",
        ca_bundle="-----BEGIN CERTIFICATE-----",
        volume_mounts=[VolumeMount("10.0.0.1:/export", "/mnt/v")],
        lifecycle_id="life-1",
        hyperloop_ip="10.0.0.2",
    )


def test_keys_match_case_insensitively_and_the_last_one_wins() -> None:
    request = parse_init_body(b'{"envVars": {"A": "1"}, "ENVVARS": {"B": "2"}, "defaultuser": "u"}')
    assert request.env_vars == {"B": "2"}
    assert request.default_user == "u"


def test_null_leaves_a_field_absent_even_after_a_value() -> None:
    request = parse_init_body(b'{"defaultUser": "u", "DefaultUser": null, "envVars": null}')
    assert request.default_user is None
    assert request.env_vars is None


def test_env_vars_null_value_is_empty_and_a_repeated_name_keeps_the_last() -> None:
    assert parse_init_body(b'{"envVars": {"A": null, "B": "1", "B": "2"}}').env_vars == {
        "A": "",
        "B": "2",
    }


def test_volume_mounts_keys_and_null_items() -> None:
    body = b'{"volumeMounts": [null, {"NFS_TARGET": "t"}, {"path": "/p", "other": 1}]}'
    assert parse_init_body(body).volume_mounts == [
        VolumeMount("", ""),
        VolumeMount("t", ""),
        VolumeMount("", "/p"),
    ]


def test_escapes_are_refused_only_in_the_token() -> None:
    assert parse_init_body(b'{"defaultUser": "a\\u0062"}').default_user == "ab"
    with pytest.raises(InitBodyError):
        parse_init_body(b'{"accessToken": "a\\u0062"}')
    with pytest.raises(InitBodyError):
        parse_init_body(b'{"accessToken": "a\\\\b"}')


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'"x"',
        b"5",
        b"{} {}",
        b"{} x",
        b'{"defaultUser": "\xff"}',
        b'{"accessToken": ""}',
        b'{"accessToken": 5}',
        b'{"accessToken": null, "accessToken": ["x"]}',
        b'{"envVars": {"A": 1}}',
        b'{"envVars": []}',
        b'{"envVars": "A=1"}',
        b'{"defaultUser": 7}',
        b'{"caBundle": true}',
        b'{"volumeMounts": {}}',
        b'{"volumeMounts": [5]}',
        b'{"volumeMounts": [{"path": 1}]}',
        b'{"timestamp": 1700000000}',
    ],
)
def test_bodies_go_refuses(body: bytes) -> None:
    with pytest.raises(InitBodyError):
        parse_init_body(body)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", unix_ns("2024-01-02 03:04:05")),
        ("2024-01-02T03:04:05.5Z", unix_ns("2024-01-02 03:04:05", nanos=500_000_000)),
        ("2024-01-02T03:04:05+01:30", unix_ns("2024-01-02 01:34:05")),
        ("2024-01-02T03:04:05-00:15", unix_ns("2024-01-02 03:19:05")),
        ("1970-01-01T00:00:00Z", 0),
        ("2024-02-29T00:00:00Z", unix_ns("2024-02-29 00:00:00")),
    ],
)
def test_rfc3339(text: str, expected: int) -> None:
    assert parse_rfc3339_ns(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "2024-01-02T03:04:05",
        "2024-01-02 03:04:05Z",
        "2024-02-30T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-01-02T24:00:00Z",
        "2024-01-02T03:04:05+24:00",
        "2024-01-02T03:04:05+01:60",
        "2024-01-02T03:04:05.Z",
    ],
)
def test_rfc3339_refused(text: str) -> None:
    with pytest.raises(InitBodyError):
        parse_rfc3339_ns(text)


def test_repr_keeps_secrets_out_of_logs() -> None:
    request = parse_init_body(b'{"accessToken": "s3cret", "envVars": {"K": "v4lue"}}')
    assert "s3cret" not in repr(request)
    assert "v4lue" not in repr(request)
