"""Exit statuses as Go's `os.ProcessState.String()` prints them.

The SDKs show these strings to users (`CommandExitException.error`), so they
must be byte-identical to upstream's: `exit status 3`, `signal: killed`,
`signal: segmentation fault (core dumped)`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Go's syscall signal table for Linux (zsignal_linux_*.go), indexed by number.
SIGNAL_NAMES: dict[int, str] = {
    1: "hangup",
    2: "interrupt",
    3: "quit",
    4: "illegal instruction",
    5: "trace/breakpoint trap",
    6: "aborted",
    7: "bus error",
    8: "floating point exception",
    9: "killed",
    10: "user defined signal 1",
    11: "segmentation fault",
    12: "user defined signal 2",
    13: "broken pipe",
    14: "alarm clock",
    15: "terminated",
    16: "stack fault",
    17: "child exited",
    18: "continued",
    19: "stopped (signal)",
    20: "stopped",
    21: "stopped (tty input)",
    22: "stopped (tty output)",
    23: "urgent I/O condition",
    24: "CPU time limit exceeded",
    25: "file size limit exceeded",
    26: "virtual timer expired",
    27: "profiling timer expired",
    28: "window changed",
    29: "I/O possible",
    30: "power failure",
    31: "bad system call",
}


def signal_name(signum: int) -> str:
    return SIGNAL_NAMES.get(signum, f"signal {signum}")


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """The fields of an `EndEvent`."""

    exit_code: int
    exited: bool
    status: str

    @property
    def error(self) -> str | None:
        """Go reports a non-nil `*ExitError` for anything but a clean exit 0."""
        return None if self.exited and self.exit_code == 0 else self.status


def from_wait_status(status: int) -> ExitStatus:
    """Decode a raw `waitpid` status word."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return ExitStatus(code, True, f"exit status {code}")
    if os.WIFSIGNALED(status):
        text = "signal: " + signal_name(os.WTERMSIG(status))
        if os.WCOREDUMP(status):
            text += " (core dumped)"
        return ExitStatus(-1, False, text)
    # Stopped/continued never reach us (no WUNTRACED); keep Go's fallback shape.
    return ExitStatus(-1, False, f"<unknown status {status:#x}>")
