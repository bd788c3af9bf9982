"""A small, long-lived process that starts every child for the daemon.

Forking the daemon itself copies the page tables of a ~40 MiB Python process
with the GIL held, and upstream's `/bin/sh` → `ionice` → `nice` chain costs
three more execs of dynamically linked programs before the command starts.
The fork server is forked from envd at start-up, before the heavy imports,
and stays small; for each request it clones itself with `CLONE_PARENT`, so the
child is the *daemon's* child (the daemon reaps it by pidfd with its exact
status, and `$PPID` is envd's, as upstream), applies in Python what upstream's
Go fork/exec and wrapper do, and execs the command directly:

1. stdio from the daemon's fds, the cgroup joined (as root), its own process
   group (pipes) or session with the terminal as controlling tty (PTY),
   groups/gid/uid, the cwd entered as the user: a failure here is a spawn
   error (Go's `fork/exec /bin/sh: <errno>`), reported back before the reply;
2. then, in the started process as the user, what the wrapper does:
   `oom_score_adj` 100, I/O priority best-effort/4 (if the image has
   `ionice`), nice reset as upstream's `nice -n <0 − envd's nice>` (if it has
   `nice`), `PWD` as the shell leaves it, and exec with `execvp`'s search; a
   failure here is what the wrapper's helpers print and their exit status.

Only the standard library is imported here: this module is loaded by
`envd.cli` before the daemon's own imports, and its server runs in the
forked copy. The wire format is private to this module (`Request`,
`encode_reply`), and the daemon side is `spawners.ForkServerSpawner`.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import marshal
import os
import signal
import socket
import struct
import termios
from dataclasses import dataclass, fields
from typing import NoReturn

# A request carries the child's three stdio fds (a terminal's slave thrice).
FDS_PER_REQUEST = 3
MAX_REQUEST = 1 << 20  # argv + env; larger requests take another spawner
_REPLY = struct.Struct("<Iii")  # sequence, pid, errno (0: started)

CLONE_PARENT = 0x00008000
CLONE_VFORK = 0x00004000
CLONE_INTO_CGROUP = 0x200000000
IOPRIO_WHO_PROCESS = 1
PR_SET_DUMPABLE = 4
_SYSCALLS = {
    "x86_64": {"clone": 56, "clone3": 435, "ioprio_set": 251, "rt_sigaction": 13},
    "aarch64": {"clone": 220, "clone3": 435, "ioprio_set": 30, "rt_sigaction": 134},
}
# glibc's own signals (SIGCANCEL, SIGSETXID), which its sigaction refuses to touch:
# if envd was started with them ignored, children would inherit that; Go's
# runtime, which handles every signal, leaves upstream's children at default.
_GLIBC_SIGNALS = (32, 33)
# Signals Python (or we) may have set to "ignore"; ignored signals survive exec.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True, slots=True)
class Request:
    """What the child needs besides its fds. Plain values only (marshal)."""

    seq: int
    argv: list[str]
    env: list[str]
    uid: int
    gid: int
    groups: list[int]
    cwd: str
    terminal: bool
    cgroup: str | None
    oom_score_adj: int
    ioprio: int | None  # None: the image has no ionice
    nice: str | None  # path of the image's nice, None if it has none
    nice_delta: int
    base_nice: int  # envd's own nice now, which a child of envd would inherit
    ionice: str | None  # path of the image's ionice (for its messages)

    def encode(self) -> bytes:
        # Not dataclasses.astuple: it deep-copies every list (~0.5 ms here).
        return marshal.dumps(tuple(getattr(self, f.name) for f in fields(self)))

    @classmethod
    def decode(cls, data: bytes) -> Request:
        return cls(*marshal.loads(data))


def encode_reply(seq: int, pid: int, error: int) -> bytes:
    return _REPLY.pack(seq, pid, error)


def decode_reply(data: bytes) -> tuple[int, int, int]:
    seq, pid, error = _REPLY.unpack(data)
    return seq, pid, error


# --- starting the server ------------------------------------------------------


class _Started:
    """The daemon's end of the server's socket, once `start` ran."""

    sock: socket.socket | None = None
    pid = 0


def connection() -> socket.socket | None:
    return _Started.sock


def stop() -> None:
    """Close our end: the server exits (its children keep running). For tests."""
    if _Started.sock is not None:
        _Started.sock.close()
        _Started.sock = None
    reap(block=True)


def reap(*, block: bool = False) -> None:
    """Collect the server once it has exited (it is our child)."""
    if _Started.pid:
        with contextlib.suppress(ChildProcessError):
            pid, _ = os.waitpid(_Started.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return
        _Started.pid = 0


def start() -> socket.socket | None:
    """Fork the server off this (still small) process; the daemon's end of its socket.

    None where it cannot run (an unknown architecture, no ctypes); the
    daemon then spawns another way.
    """
    if os.uname().machine not in _SYSCALLS:
        return None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        ours.close()
        try:
            serve(theirs)
        finally:
            os._exit(1)
    theirs.close()
    _Started.sock, _Started.pid = ours, pid
    return ours


def serve(sock: socket.socket) -> NoReturn:
    """The server's loop: one request at a time, until the daemon's end closes."""
    # Its own group, so signals aimed at envd's (Ctrl-C in a shell) are not
    # ours; the session stays envd's, which every pipe child inherits.
    os.setpgid(0, 0)
    _close_inherited(keep=sock.fileno())
    # Received fds must not land on 0–2, which each child overwrites with its stdio.
    for fd in range(3):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free fd: this one
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    # Woken by each request, the server would preempt the daemon in the middle
    # of its sendmsg (and keep it off that CPU while the child runs up to
    # exec); a batch task never preempts on wakeup. Children get the policy
    # back first thing.
    policy = os.sched_getscheduler(0)
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    sys_calls = _Syscalls(policy)
    for number in _GLIBC_SIGNALS:
        with contextlib.suppress(OSError):
            sys_calls.reset_signal(number)
    # Children import nothing once they run as the user, who may not be able
    # to read our installation (a venv under /root): everything they need is
    # loaded here, as root, beforehand.
    import locale  # noqa: F401, PLC0415

    while True:
        try:
            data, fds = _receive(sock)
        except OSError:
            os._exit(0)
        if not data:
            os._exit(0)  # the daemon is gone; its children are not ours to keep
        seq = 0
        try:
            request = Request.decode(data)
            seq = request.seq
            if len(fds) != FDS_PER_REQUEST:
                raise OSError(errno.EBADF, "missing stdio fds")
            pid, error = _spawn(sys_calls, request, fds)
        except OSError as e:
            pid, error = 0, e.errno or errno.EIO
        except Exception:
            pid, error = 0, errno.EINVAL
        finally:
            for fd in fds:
                os.close(fd)  # the child has its copies; EOF must depend on it alone
        try:
            sock.send(encode_reply(seq, pid, error))
        except OSError:
            os._exit(0)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One request and its fds, close-on-exec (socket.recv_fds drops its flags argument)."""
    fd_size = array.array("i").itemsize
    data, ancdata, _flags, _addr = sock.recvmsg(
        MAX_REQUEST, socket.CMSG_SPACE(FDS_PER_REQUEST * fd_size), socket.MSG_CMSG_CLOEXEC
    )
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fd_size)])
    return data, list(fds)


def _close_inherited(keep: int) -> None:
    """Everything the daemon had open at fork time except stdio and our socket."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


class _Syscalls:
    """The few calls `os` lacks, through ctypes, with the GIL held (PyDLL)."""

    def __init__(self, policy: int) -> None:
        import ctypes  # noqa: PLC0415  # only the server needs it

        self.policy = policy  # the scheduling policy envd's children inherit
        self.ctypes = ctypes
        libc = ctypes.PyDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._prctl = libc.prctl
        self._execve = libc.execve
        numbers = _SYSCALLS[os.uname().machine]
        self.nr_clone = numbers["clone"]
        self.nr_clone3 = numbers["clone3"]
        self.nr_ioprio_set = numbers["ioprio_set"]
        self.nr_rt_sigaction = numbers["rt_sigaction"]
        # clone3 with CLONE_INTO_CGROUP (Linux 5.7): until it is refused once.
        self.into_cgroup = True

    def _check(self, result: int) -> int:
        if result < 0:
            code = self.ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    def clone_parent(self) -> int:
        """fork(), except that the child's parent is our parent (the daemon).

        With no CLONE_VM the child gets a copy of our memory and returns here
        like a forked child; glibc's fork handlers do not run, which is fine in
        a process with one thread that execs or exits right away.
        """
        c = self.ctypes
        flags = c.c_ulong(CLONE_PARENT | CLONE_VFORK | signal.SIGCHLD)
        return self._check(self._syscall(c.c_long(self.nr_clone), flags, 0, 0, 0, 0))

    def clone_parent_into(self, cgroup_fd: int) -> int:
        """`clone_parent`, the child born in the cgroup `cgroup_fd` (CLONE_INTO_CGROUP).

        Moving a process after it started waits for an RCU grace period
        (~12 ms per child measured here); a child created inside costs nothing
        extra. OSError (e.g. ENOSYS on an old kernel) means: use the fallback.
        """
        c = self.ctypes
        # struct clone_args, version 2 (with `cgroup`): eleven u64.
        args = (c.c_uint64 * 11)()
        args[0] = CLONE_PARENT | CLONE_VFORK | CLONE_INTO_CGROUP  # flags
        args[4] = signal.SIGCHLD  # exit_signal
        args[10] = cgroup_fd  # cgroup
        size = c.c_size_t(c.sizeof(args))
        return self._check(self._syscall(c.c_long(self.nr_clone3), c.byref(args), size))

    def reset_signal(self, signum: int) -> None:
        """SIG_DFL for `signum` through the kernel (an all-zero struct sigaction)."""
        c = self.ctypes
        action = (c.c_uint64 * 4)()  # handler SIG_DFL, no flags, no restorer, empty mask
        nr = c.c_long(self.nr_rt_sigaction)
        self._check(self._syscall(nr, c.c_int(signum), c.byref(action), None, c.c_size_t(8)))

    def ioprio_set(self, value: int) -> None:
        c = self.ctypes
        nr = c.c_long(self.nr_ioprio_set)
        self._check(self._syscall(nr, c.c_int(IOPRIO_WHO_PROCESS), c.c_int(0), c.c_int(value)))

    def set_dumpable(self) -> None:
        c = self.ctypes
        self._check(self._prctl(c.c_int(PR_SET_DUMPABLE), c.c_ulong(1), 0, 0, 0))

    def execve(self, path: str, argv: list[str], env: list[str]) -> int:
        """Exec with the environment entries exactly as given; the errno if it fails."""
        c = self.ctypes
        c_argv = (c.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
        c_env = (c.c_char_p * (len(env) + 1))(*[os.fsencode(e) for e in env], None)
        self._execve(os.fsencode(path), c_argv, c_env)
        return self.ctypes.get_errno() or errno.EIO


def _spawn(sys_calls: _Syscalls, request: Request, fds: list[int]) -> tuple[int, int]:
    """Start one child; (pid, 0) once it is set up, (pid or 0, errno) if it failed."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid, joined = _clone(sys_calls, request)
        if pid == 0:
            try:
                os.close(report_r)
                _child(sys_calls, request, fds, report_w, joined)
            finally:
                os._exit(127)
        os.close(report_w)
        report_w = -1
        # EOF: the child closed its end after the last step that can fail the spawn.
        report = b""
        while len(report) < 4:
            chunk = os.read(report_r, 4 - len(report))
            if not chunk:
                break
            report += chunk
        if len(report) == 4:
            return pid, int.from_bytes(report, "little") or errno.EIO
        return pid, 0
    finally:
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)


def _clone(sys_calls: _Syscalls, request: Request) -> tuple[int, bool]:
    """(pid, whether the child already is in its cgroup); as fork(): 0 in the child."""
    if request.cgroup is None or not sys_calls.into_cgroup:
        return sys_calls.clone_parent(), False
    try:
        cgroup_fd = os.open(request.cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return sys_calls.clone_parent(), False  # the child's own join reports the error
    try:
        return sys_calls.clone_parent_into(cgroup_fd), True
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EOPNOTSUPP):
            sys_calls.into_cgroup = False  # this kernel cannot: join after the clone
        return sys_calls.clone_parent(), False
    finally:
        os.close(cgroup_fd)


# --- in the child ---------------------------------------------------------------


def _child(
    sys_calls: _Syscalls, request: Request, fds: list[int], report: int, joined: bool
) -> None:
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, sys_calls.policy, os.sched_param(0))
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)  # the copies on 0–2 are inheritable, the originals not
        if request.cgroup is not None and not joined:
            _join_cgroup(request.cgroup)
        if request.terminal:
            os.setsid()
        else:
            os.setpgid(0, 0)
        if os.getpriority(os.PRIO_PROCESS, 0) != request.base_nice:
            os.setpriority(os.PRIO_PROCESS, 0, request.base_nice)  # envd was reniced since
        if not _has_ids(request):
            os.setgroups(request.groups)
            os.setresgid(request.gid, request.gid, request.gid)
            os.setresuid(request.uid, request.uid, request.uid)
        if request.terminal:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.chdir(request.cwd)
    except OSError as e:
        os.write(report, (e.errno or errno.EIO).to_bytes(4, "little"))
        os._exit(127)
    # Started: from here on, failures are the process's own output and status.
    os.close(report)
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    _wrapper(sys_calls, request)


def _has_ids(request: Request) -> bool:
    """Already these ids (a daemon not run as root, or root for root): nothing to drop."""
    return (
        os.getresuid() == (request.uid,) * 3
        and os.getresgid() == (request.gid,) * 3
        and set(os.getgroups()) == set(request.groups)
    )


def _join_cgroup(cgroup: str) -> None:
    fd = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode(errors="surrogateescape") + b"\n")


def _wrapper(sys_calls: _Syscalls, request: Request) -> NoReturn:
    """What `/bin/sh -c 'echo 100 > /proc/$$/oom_score_adj && exec ionice … nice … "$@"'` does."""
    if os.getuid() != 0:
        # setuid made us non-dumpable, which makes /proc/self root's; the
        # wrapper shell (freshly exec'd) could write its own oom_score_adj.
        with contextlib.suppress(OSError):
            sys_calls.set_dumpable()
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, b"%d\n" % request.oom_score_adj)
        finally:
            os.close(fd)
    except OSError as e:
        _say(f"/bin/sh: 1: cannot create /proc/{os.getpid()}/oom_score_adj: {_c_text(e)}")
        os._exit(2)
    if request.ioprio is not None:
        try:
            sys_calls.ioprio_set(request.ioprio)
        except OSError as e:
            _say(f"ionice: ioprio_set failed: {_c_text(e)}")
            os._exit(1)
    if request.nice is not None:
        _nice(request.nice, request.nice_delta)
    env = _with_pwd(request.env)
    _exec(sys_calls, request, env)


def _nice(path: str, delta: int) -> None:
    """GNU nice: add `delta`; a refused change is a warning, the command still runs."""
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, max(-20, min(19, current + delta)))
    except OSError as e:
        _say(f"{path}: cannot set niceness: {_c_text(e)}")
        if e.errno not in (errno.EPERM, errno.EACCES):
            os._exit(125)


def _with_pwd(env: list[str]) -> list[str]:
    """PWD as the wrapper shell (dash) exports it: the given value if it names the cwd."""
    given = None
    rest = []
    for entry in env:
        if entry.startswith("PWD="):
            given = entry[4:]
        else:
            rest.append(entry)
    pwd = None
    if given and given.startswith("/"):
        with contextlib.suppress(OSError):
            there, here = os.stat(given), os.stat(".")
            if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino):
                pwd = given
    if pwd is None:
        try:
            pwd = os.getcwd()
        except OSError:
            return rest
    return [*rest, f"PWD={pwd}"]


def _exec(sys_calls: _Syscalls, request: Request, env: list[str]) -> NoReturn:
    """execvp as glibc does it (nice and ionice use it), then their messages on failure."""
    name = request.argv[0]
    env_path = next((e[5:] for e in reversed(env) if e.startswith("PATH=")), None)
    if "/" in name:
        candidates = [name]
    else:
        dirs = ("/bin:/usr/bin" if env_path is None else env_path).split(":")
        candidates = [f"{d}/{name}" if d else name for d in dirs] if name else []
    failure = errno.ENOENT
    saw_eacces = False
    for path in candidates:
        code = sys_calls.execve(path, request.argv, env)
        if code == errno.ENOEXEC:
            # A script without #!: glibc runs it with the shell.
            code = sys_calls.execve("/bin/sh", ["/bin/sh", path, *request.argv[1:]], env)
        if code == errno.EACCES:
            saw_eacces = True
        elif code not in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE, errno.ENODEV):
            failure = code
            break
    else:
        failure = errno.EACCES if saw_eacces else errno.ENOENT
    status = 127 if failure == errno.ENOENT else 126
    text = os.strerror(failure)
    if request.nice is not None:
        _say(f"{request.nice}: {_quote(name, env)}: {text}")
    elif request.ionice is not None:
        _say(f"ionice: failed to execute {name}: {text}")
    elif failure == errno.ENOENT:
        _say(f"--: 1: exec: {name}: not found")
    else:
        _say(f"--: 1: exec: {name}: {text}")
    os._exit(status)


def _c_text(e: OSError) -> str:
    return os.strerror(e.errno or errno.EIO)


def _quote(name: str, env: list[str]) -> str:
    """GNU quote(): curly quotes when the child's locale is an installed UTF-8 one."""
    values = {k: v for k, _, v in (e.partition("=") for e in env)}
    wanted = next((values[k] for k in ("LC_ALL", "LC_CTYPE", "LANG") if values.get(k)), "")
    if wanted and _utf8_locale(wanted):
        return f"\u2018{name}\u2019"
    return f"'{name}'"


def _utf8_locale(name: str) -> bool:
    import locale  # noqa: PLC0415  # loaded by serve(): the user may not read our files

    try:
        locale.setlocale(locale.LC_CTYPE, name)
    except locale.Error:
        return False
    return locale.nl_langinfo(locale.CODESET).upper().replace("-", "") == "UTF8"
