"""The debug image (make image) built and run by a real engine, podman with runc.

Needs root, podman (scripts/setup-podman.sh) and the images `make image` builds
from packaging/docker/Dockerfile on a Debian 12 base imported from a
debootstrapped rootfs: localhost/envd-py:latest (the onedir overlay) and
:static (the static overlay).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import sdk_smoke
from tests.container import (
    IMAGE,
    STATIC_IMAGE,
    Container,
    available,
    podman,
    run_once,
    start_time,
    tree,
)
from tests.procfs import children, states_after_reaping

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.rootfs,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (podman)"),
    pytest.mark.skipif(not available(), reason="podman is missing (make image installs it)"),
]


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    for image in (IMAGE, STATIC_IMAGE):
        if subprocess.run(["podman", "image", "exists", image], check=False).returncode:
            pytest.fail(f"{image} is missing: run `make image` (or `make test-rootfs`)")


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    c = Container()
    yield c
    c.remove()


@pytest.fixture(scope="module")
def static_container() -> Iterator[Container]:
    c = Container(STATIC_IMAGE)
    yield c
    c.remove()


# --- what is in the image -----------------------------------------------------


@pytest.mark.parametrize("image", [IMAGE, STATIC_IMAGE], ids=["onedir", "static"])
def test_image_has_no_build_tools_and_no_build_chroot(image: str) -> None:
    tools = "gcc cc c++ make ld as pip pip3 pyinstaller patchelf staticx debootstrap"
    out = run_once(
        image,
        "-c",
        f"for t in {tools}; do command -v $t; done;"
        " ls -d /opt/python /opt/freeze /src /out /build-bullseye /dist 2>/dev/null;"
        " ls /usr/lib/envd/envd",
    )
    # Only the daemon itself: no compiler, no freezing tools, no chroot, no sources.
    assert out.split() == ["/usr/lib/envd/envd"]


def test_static_image_runs_the_carried_glibc() -> None:
    maps = run_once(STATIC_IMAGE, "-c", "/usr/bin/envd -version; cat /proc/self/maps >/dev/null")
    assert maps.strip() == run_once(IMAGE, "-c", "/usr/bin/envd -version").strip()
    interp = run_once(
        STATIC_IMAGE, "-c", "readlink -f /usr/bin/envd; ls /usr/lib/envd/glibc/ld-linux-x86-64.so.2"
    )
    assert interp.split() == ["/usr/lib/envd/envd", "/usr/lib/envd/glibc/ld-linux-x86-64.so.2"]


# --- the SDK against the container, as a user would ---------------------------


def test_container_sdk_runs_as_the_images_default_user(container: Container) -> None:
    sdk_smoke.run_as_default_user(container.url, "user", "/home/user")


def test_container_sdk_runs_a_command_as_user(container: Container) -> None:
    sdk_smoke.run_as_user(container.url)


def test_container_sdk_pty(container: Container) -> None:
    sdk_smoke.pty_echo(container.url)


def test_container_sdk_files_write_read_watch(container: Container) -> None:
    sdk_smoke.files_write_read_watch(container.url)


def test_container_children_get_the_original_environment(container: Container) -> None:
    sdk_smoke.child_environment_is_clean(container.url)


def test_container_port_is_published_on_loopback_only(container: Container) -> None:
    ports = container.inspect("{{json .NetworkSettings.Ports}}")
    assert f'"HostIp":"127.0.0.1","HostPort":"{container.port}"' in ports, ports
    assert "0.0.0.0" not in ports


# --- envd as the container's PID 1 --------------------------------------------


def assert_pid1_reaps_orphans(c: Container) -> None:
    cmdline = Path(f"/proc/{c.init}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0] == b"/usr/bin/envd"
    (daemon,) = children(c.init)
    # A shell of `podman exec` whose background children are orphaned as it
    # exits: the kernel hands them to PID 1 of the container's PID namespace.
    c.exec("/bin/sh", "-c", "for i in 1 2 3; do sleep 2 & done")
    orphans = [p for p in children(c.init) if p != daemon]
    assert len(orphans) == 3
    assert states_after_reaping(orphans) == ["", "", ""], "orphans left as zombies"
    assert children(c.init) == {daemon}


def test_container_envd_is_pid1_and_reaps_orphans(container: Container) -> None:
    assert_pid1_reaps_orphans(container)


def test_static_container_envd_is_pid1_and_reaps_orphans(static_container: Container) -> None:
    assert_pid1_reaps_orphans(static_container)


def test_static_container_sdk_runs_a_command_as_user(static_container: Container) -> None:
    sdk_smoke.run_as_user(static_container.url)
    sdk_smoke.pty_echo(static_container.url)


# --- /init with a token, then podman stop --------------------------------------


def assert_stops_quickly_leaving_nothing(c: Container, token: str | None) -> None:
    # Something running inside: a command and its child, started through the SDK.
    sbx = sdk_smoke.with_token(c.url, token)
    handle = sbx.commands.run("sleep 300 & sleep 301", user="user", background=True)
    assert handle.pid > 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(tree(c.init)) < 5:
        time.sleep(0.05)
    pids = {p: start_time(p) for p in tree(c.conmon)}
    assert len(pids) >= 6, pids  # conmon, PID 1, the daemon, the shell, two sleeps
    started = time.monotonic()
    podman("stop", "--time", "10", c.name)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"podman stop took {elapsed:.2f} s"
    # envd ended on the SIGTERM itself (after 10 s podman would have sent SIGKILL: 137).
    assert c.inspect("{{.State.ExitCode}}") == str(128 + signal.SIGTERM)
    # Every process of the container is gone, conmon included (a pid reused by
    # an unrelated process has another start time).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(start_time(p) == s for p, s in pids.items()):
        time.sleep(0.05)
    left = [p for p, s in pids.items() if start_time(p) == s]
    assert not left, f"left behind: {left}"


def test_container_init_with_token_then_stop() -> None:
    c = Container()
    try:
        token = sdk_smoke.init_with_token(c.url)
        assert_stops_quickly_leaving_nothing(c, token)
    finally:
        c.remove()


def test_static_container_stops_quickly_leaving_nothing() -> None:
    c = Container(STATIC_IMAGE)
    try:
        assert_stops_quickly_leaving_nothing(c, None)
    finally:
        c.remove()


# --- the README's "Try it with the SDK in a container" -------------------------


def readme_container_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Try it with the SDK in a container", 1)[1].split("\n## ", 1)[0]


def test_readme_builds_and_runs_the_image_make_image_builds() -> None:
    lines = readme_container_section().splitlines()
    build = next(line for line in lines if line.startswith("docker build "))
    run = next(line for line in lines if line.startswith("docker run "))
    script = (REPO / "scripts/build-image.sh").read_text()
    # make image builds the same Dockerfile from the same context; its tag is
    # the README's (podman names a local image localhost/NAME).
    assert build.split()[2:4] == ["-f", "packaging/docker/Dockerfile"]
    assert '-f "$repo/packaging/docker/Dockerfile"' in script
    assert build.split()[4:7] == ["-t", "envd-py", "."]
    assert IMAGE == "localhost/envd-py:latest"
    assert run.split("#")[0].split() == [
        "docker", "run", "--rm", "-p", "127.0.0.1:49983:49983", "envd-py"
    ]  # fmt: skip


def packaging_readme_section() -> str:
    text = (REPO / "packaging" / "README.md").read_text()
    return text.split("### Try it with the SDK\n", 1)[1].split("\n### ", 1)[0]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (readme_container_section, ["user", "/home/user"]),
        (packaging_readme_section, ["user", "/home/user", "hi"]),
    ],
    ids=["README", "packaging-README"],
)
def test_readme_sdk_snippet_against_the_container(
    container: Container, section: Callable[[], str], expected: list[str]
) -> None:
    block = section()
    snippet = re.search(r"E2B_DEBUG=true python -c '\n(.*?)\n'", block, re.DOTALL)
    assert snippet, block
    out = subprocess.run(
        [sys.executable, "-c", snippet[1]],
        env={**os.environ, "E2B_DEBUG": "true", "E2B_SANDBOX_URL": container.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.split() == expected
