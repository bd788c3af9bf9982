"""Runs every benchmark in turn: `make bench` or `python -m bench`."""

from __future__ import annotations

import runpy
import sys

# bench.bundle is left out: it needs `make bundle` first (packaging/README.md).
MODULES = [
    "bench.startup",
    "bench.process_run",
    "bench.process_output",
    "bench.filesystem_listdir",
    "bench.filesystem_watch",
    "bench.files_http",
    "bench.init_storm",
    "bench.upgrade",
    "bench.port_forward",
    "bench.freeze",  # root only
]

if __name__ == "__main__":
    for name in MODULES:
        print(f"\n== {name}")
        sys.argv = [name]
        runpy.run_module(name, run_name="__main__")
