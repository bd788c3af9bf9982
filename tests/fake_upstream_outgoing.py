"""Stands in for an upstream (Go) envd handing over to envd-py, by upstream's conventions.

Usage: python -m tests.fake_upstream_outgoing RUN_DIR SCHEMA -- ENVD_FLAGS...

It starts a child as upstream would (stdout/stderr/stdin pipes), moves the
parent's ends to the fd slots 200-202 with close-on-exec cleared, writes the
blob with message classes built from upstream's own descriptors
(tests/data/upstream-handover.binpb), and execs `python -m envd FLAGS
--resume-handover` in the same process, as the Go binary's syscall.Exec does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DATA = Path(__file__).parent / "data" / "upstream-handover.binpb"
CHILD = 'echo from-upstream; read x; echo "got $x"; exec sleep 600'


def upstream_state() -> Any:
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(DATA.read_bytes()).file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("upgrade.HandoverState"))()


def main(run_dir: str, schema: int, flags: list[str]) -> None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe()
    child = subprocess.Popen(
        ["/bin/sh", "-c", CHILD], stdin=in_r, stdout=out_w, stderr=err_w, start_new_session=True
    )
    for fd in (out_w, err_w, in_r):
        os.close(fd)
    for fd, slot in ((out_r, 200), (err_r, 201), (in_w, 202)):
        os.dup2(fd, slot, inheritable=True)
        os.close(fd)
    state = upstream_state()
    state.schema = schema
    state.from_ver = "0.6.13"
    proc = state.processes.add(
        pid=child.pid,
        tag="up",
        has_tag=True,
        cg_type="user",
        stdout_fd=200,
        stderr_fd=201,
        stdin_fd=202,
        tty_fd=-1,
        timeout_ms=600_000,
    )
    proc.config.cmd = "/bin/sh"
    proc.config.args.extend(["-c", CHILD])
    # Not a child of ours: cannot be taken over (counted as failed).
    state.processes.add(pid=1, stdout_fd=-1, stderr_fd=-1, stdin_fd=-1, tty_fd=-1)
    exit_ = state.terminated.add(pid=4_000_000, tag="gone", has_tag=True, remaining_ms=20_000)
    exit_.end.exit_code, exit_.end.exited, exit_.end.status = 9, True, "exit status 9"
    state.watchers.add(id="wupstream", path=run_dir, recursive=False)
    state.mounts.add(path="/mnt/nfs-upstream", lifecycle_id="life-1")
    path = os.path.join(run_dir, "envd-handover.pb")
    with open(path, "wb") as f:
        f.write(state.SerializeToString())
    os.chmod(path, 0o600)
    # Popen must not reap or warn about the child: the next image owns it.
    child.returncode = 0
    argv = [sys.executable, "-m", "envd", *flags, "--resume-handover"]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    sep = sys.argv.index("--")
    main(sys.argv[1], int(sys.argv[2]), sys.argv[sep + 1 :])
