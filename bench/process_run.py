"""`commands.run("true")` through the e2b SDK vs spawning `/bin/bash -l -c true` directly.

Goal (issue 2): SDK round trip minus direct spawn <= 1.5 ms at p50.

Both sides run as the `user` account with the environment envd gives a
child (PATH, HOME, USER, LOGNAME): root's ~/.bashrc on a development machine
may run tools like `pyenv init` (~140 ms), which would drown the overhead.

    .venv/bin/python -m bench.process_run [runs]
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

from bench.common import summary, time_calls
from tests.daemon import Daemon

USER = "user"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with Daemon() as daemon:
        os.environ["E2B_DEBUG"] = "true"
        os.environ["E2B_SANDBOX_URL"] = daemon.url
        from e2b import Sandbox  # noqa: PLC0415  # reads the environment at import

        sandbox = Sandbox.create()
        account = pwd.getpwnam(USER)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": account.pw_dir,
            "USER": USER,
            "LOGNAME": USER,
        }

        def direct() -> None:
            subprocess.run(
                ["/bin/bash", "-l", "-c", "true"],
                check=True,
                env=env,
                cwd=account.pw_dir,
                user=account.pw_uid,
                group=account.pw_gid,
                extra_groups=os.getgrouplist(USER, account.pw_gid),
            )

        base = summary(f"baseline: bash -l -c true as {USER}", time_calls(direct, runs))
        sdk = summary(
            f'envd: commands.run("true", user="{USER}")',
            time_calls(lambda: sandbox.commands.run("true", user=USER), runs),
        )
    overhead = sdk["p50_ms"] - base["p50_ms"]
    print(
        f"overhead p50 = {overhead:.2f} ms (goal <= 1.5 ms); "
        f"ratio p50 = {sdk['p50_ms'] / base['p50_ms']:.2f}x, "
        f"p99 = {sdk['p99_ms'] / base['p99_ms']:.2f}x"
    )


if __name__ == "__main__":
    main()
