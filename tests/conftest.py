from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from e2b import AsyncSandbox, Sandbox

from tests.daemon import Daemon

# Fixtures for root-only tests: a private cgroup v2 tree, a loop-mounted file system.
pytest_plugins = ["tests.cgroupfs", "tests.loopfs"]


@pytest.fixture(scope="session")
def envd() -> Iterator[Daemon]:
    """One daemon shared by the whole session (tests must not depend on its state)."""
    with Daemon() as daemon:
        yield daemon


@pytest.fixture(scope="session")
def sdk_env(envd: Daemon) -> Iterator[None]:
    """Debug mode makes the SDK talk straight to envd, with no E2B API calls."""
    saved = {k: os.environ.get(k) for k in ("E2B_DEBUG", "E2B_SANDBOX_URL")}
    os.environ["E2B_DEBUG"] = "true"
    os.environ["E2B_SANDBOX_URL"] = envd.url
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def sandbox(sdk_env: None) -> Sandbox:
    return Sandbox.create()


@pytest.fixture(scope="session")
async def async_sandbox(sdk_env: None) -> AsyncSandbox:
    return await AsyncSandbox.create()
