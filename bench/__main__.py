"""Runs every benchmark in turn: `make bench` or `python -m bench`."""

from __future__ import annotations

import runpy
import sys

MODULES = ["bench.startup", "bench.process_run", "bench.process_output"]

if __name__ == "__main__":
    for name in MODULES:
        print(f"\n== {name}")
        sys.argv = [name]
        runpy.run_module(name, run_name="__main__")
