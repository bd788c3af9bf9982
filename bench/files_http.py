"""Upload and download throughput of `/files`, against baselines from the same run.

    .venv/bin/python -m bench.files_http [--size-mib 1024] [--dir /tmp]

Baselines: `dd` into the page cache and `cat` out of it on the same
filesystem, and a minimal loopback file server (raw sockets, `os.sendfile`
out, `recv_into` + `os.write` in) that no HTTP server can beat. The client
side is raw sockets too (sendfile for bodies, `recv_into` for answers), so the
client is never the bottleneck. Prints MB/s and ratios; the daemon's peak RSS
shows that memory stays bounded.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable

import psutil

from tests.daemon import Daemon, free_port

MIB = 1 << 20
BOUNDARY = "benchboundary7MA4YWxkTrZu0gW"


# --- the minimal server (baseline) ---


def serve_minimal(port: int) -> None:
    """One connection at a time: GET sends the file with sendfile, POST writes the body."""
    listener = socket.create_server(("127.0.0.1", port))
    buf = bytearray(MIB)
    while True:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            head, _, rest = head.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, target, _ = lines[0].split(" ")
            path = target.split("path=", 1)[1]
            if method == "GET":
                fd = os.open(path, os.O_RDONLY)
                size = os.fstat(fd).st_size
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                offset = 0
                while offset < size:
                    offset += os.sendfile(conn.fileno(), fd, offset, size - offset)
                os.close(fd)
            else:
                length = next(
                    int(line.split(":")[1])
                    for line in lines
                    if line.lower().startswith("content-length")
                )
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, rest)
                remaining = length - len(rest)
                view = memoryview(buf)
                while remaining > 0:
                    n = conn.recv_into(view, min(len(buf), remaining))
                    if not n:
                        break
                    os.write(fd, view[:n])
                    remaining -= n
                os.close(fd)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


# --- raw-socket client ---


def _read_response(sock: socket.socket) -> tuple[bytes, int]:
    """Headers and the number of body bytes received (connection closes at the end)."""
    buf = bytearray(4 * MIB)
    view = memoryview(buf)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection closed in headers: {head!r}")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    received = len(rest)
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while length is None or received < length:
        n = sock.recv_into(view)
        if not n:
            break
        received += n
    return head, received


def download(port: int, path: str, headers: str = "") -> tuple[float, int]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        request = f"GET /files?path={path} HTTP/1.1\r\nHost: b\r\n{headers}Connection: close\r\n"
        sock.sendall(request.encode() + b"\r\n")
        head, received = _read_response(sock)
        elapsed = time.perf_counter() - start
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head.decode())
    return elapsed, received


def upload(
    port: int, dest: str, pieces: list[bytes | str], content_type: str, extra: str = ""
) -> float:
    """`pieces`: literal bytes or paths of files sent with sendfile."""
    length = sum(len(p) if isinstance(p, bytes) else os.path.getsize(p) for p in pieces)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        sock.sendall(
            f"POST /files?path={dest} HTTP/1.1\r\nHost: b\r\nContent-Type: {content_type}\r\n"
            f"{extra}Content-Length: {length}\r\nConnection: close\r\n\r\n".encode()
        )
        for piece in pieces:
            if isinstance(piece, bytes):
                sock.sendall(piece)
            else:
                with open(piece, "rb") as f:
                    sock.sendfile(f)
        head, _ = _read_response(sock)
        elapsed = time.perf_counter() - start
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head.decode())
    return elapsed


# --- measurement helpers ---


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def best_of(runs: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(runs))


def drop_file(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def make_source(path: str, size: int) -> None:
    """Half random, half text-like (base64): realistic for gzip, never all zeros."""
    block = os.urandom(8 * MIB) + base64.b64encode(os.urandom(6 * MIB))
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = block[: size - written]
            f.write(piece)
            written += len(piece)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="filesystem to test on")
    parser.add_argument("--runs", type=int, default=2, help="best of N per measurement")
    parser.add_argument("--serve-minimal", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_minimal:
        serve_minimal(args.serve_minimal)
        return

    size = args.size_mib * MIB
    work = tempfile.mkdtemp(prefix="bench-files-", dir=args.dir)
    src = os.path.join(work, "source.bin")
    gz = os.path.join(work, "source.bin.gz")
    out = os.path.join(work, "out.bin")
    print(f"preparing {args.size_mib} MiB in {work} ...", flush=True)
    make_source(src, size)
    with open(src, "rb") as fin, open(gz, "wb") as fout:
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        while chunk := fin.read(8 * MIB):
            fout.write(compressor.compress(chunk))
        fout.write(compressor.flush())
    subprocess.run(["cat", src, gz], check=True, stdout=subprocess.DEVNULL)  # warm the cache

    mb = size / 1e6
    results: dict[str, float] = {}

    def rate(name: str, seconds: float, nbytes: float = mb) -> None:
        results[name] = nbytes / seconds
        print(f"  {name:<38} {results[name]:8.0f} MB/s", flush=True)

    print("baselines")
    rate(
        "dd write (page cache)",
        best_of(args.runs, lambda: timed(["dd", f"if={src}", f"of={out}", "bs=1M", "status=none"])),
    )
    rate("cat read (page cache)", best_of(args.runs, lambda: timed(["cat", src])))

    port = free_port()
    minimal = subprocess.Popen(
        [sys.executable, "-m", "bench.files_http", "--serve-minimal", str(port)]
    )
    try:
        time.sleep(0.5)
        rate("minimal server download", best_of(args.runs, lambda: download(port, src)[0]))
        rate(
            "minimal server upload",
            best_of(args.runs, lambda: upload(port, out, [src], "application/octet-stream")),
        )
    finally:
        minimal.terminate()
        minimal.wait()

    print("envd-py")
    multipart_head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{out}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    multipart_tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    with Daemon() as envd, PeakRss(envd.pid) as rss:
        base_rss = rss.proc.memory_info().rss
        p = envd.port
        rate("download identity", best_of(args.runs, lambda: download(p, src)[0]))
        rate("download gzip", best_of(1, lambda: download(p, src, "Accept-Encoding: gzip\r\n")[0]))
        rate(
            "upload octet-stream",
            best_of(args.runs, lambda: upload(p, out, [src], "application/octet-stream")),
        )
        rate(
            "upload multipart",
            best_of(
                args.runs,
                lambda: upload(
                    p,
                    out,
                    [multipart_head, src, multipart_tail],
                    f"multipart/form-data; boundary={BOUNDARY}",
                ),
            ),
        )
        rate(
            "upload octet-stream gzip",
            best_of(
                args.runs,
                lambda: upload(
                    p, out, [gz], "application/octet-stream", "Content-Encoding: gzip\r\n"
                ),
            ),
        )
        with open(out, "rb") as f1, open(src, "rb") as f2:
            assert f1.read(MIB) == f2.read(MIB), "upload content mismatch"
    shutil.rmtree(work)

    r = results
    ratios = [
        (
            "download identity / minimal server",
            r["download identity"],
            r["minimal server download"],
            "goal >= 0.3",
        ),
        (
            "upload octet-stream / minimal server",
            r["upload octet-stream"],
            r["minimal server upload"],
            "goal >= 0.3",
        ),
        (
            "upload multipart / octet-stream",
            r["upload multipart"],
            r["upload octet-stream"],
            "goal >= 0.8",
        ),
        ("download identity / cat", r["download identity"], r["cat read (page cache)"], ""),
        ("upload octet-stream / dd", r["upload octet-stream"], r["dd write (page cache)"], ""),
        ("download gzip / identity", r["download gzip"], r["download identity"], "zlib-bound"),
        (
            "upload gzip / octet-stream",
            r["upload octet-stream gzip"],
            r["upload octet-stream"],
            "zlib-bound",
        ),
    ]
    print("ratios")
    for name, value, baseline, note in ratios:
        print(f"  {name:<38} {value / baseline:5.2f}x {note}")
    print(f"daemon RSS: {base_rss / MIB:.0f} MiB at start, peak {rss.peak / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
