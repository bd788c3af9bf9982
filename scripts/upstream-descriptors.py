"""Compile upstream envd's handover schema into a descriptor set for the tests.

Usage: python scripts/upstream-descriptors.py MIRROR [COMMIT]

MIRROR is a git clone (bare is fine) of e2b-dev/infra. The three .proto files
of `packages/envd/spec` are taken from COMMIT (default: the one named in
proto/upgrade/handover.proto) and compiled, with their imports, into
tests/data/upstream-handover.binpb (no source info, so only the schema is
kept). tests/test_handover_schema.py checks our proto/ against it and decodes
our blobs with it, which works without the mirror (CI has none).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "54693ff353d26c5fe1951db5467e751f3e2f984e"
FILES = ["process/process.proto", "filesystem/filesystem.proto", "upgrade/handover.proto"]
OUT = ROOT / "tests" / "data" / "upstream-handover.binpb"


def main(mirror: str, commit: str = COMMIT) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in FILES:
            text = subprocess.run(
                ["git", "-C", mirror, "show", f"{commit}:packages/envd/spec/{name}"],
                check=True,
                capture_output=True,
            ).stdout
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{tmp}",
                "--include_imports",
                f"--descriptor_set_out={OUT}",
                *FILES,
            ],
            check=True,
        )
    print(f"wrote {OUT.relative_to(ROOT)} from {commit[:12]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
