"""Regenerate envd/gen from proto/ (protobuf messages + connectrpc ASGI apps).

Usage: python scripts/generate.py [OUTPUT_DIR]   (default: envd/gen)

The output is deterministic for fixed tool versions (grpcio-tools and
protoc-gen-connectrpc are pinned in pyproject.toml), so tests/test_generated.py
can regenerate into a temporary folder and compare byte for byte.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = [
    "process/process.proto",
    "filesystem/filesystem.proto",
    "legacy/filesystem.proto",
    "upgrade/handover.proto",
]
OWN_PACKAGES = sorted({name.split("/")[0] for name in PROTOS})
PACKAGE_INIT = '"""Generated code: run `make generate`, never edit by hand."""\n'


def generate(out: Path) -> None:
    plugin = Path(sysconfig.get_path("scripts")) / "protoc-gen-connectrpc"
    if not plugin.exists():
        plugin = Path(sys.executable).parent / "protoc-gen-connectrpc"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--plugin=protoc-gen-connectrpc={plugin}",
            f"--connectrpc_out={out}",
            "--connectrpc_opt=protobuf=google",
            *PROTOS,
        ],
        check=True,
        cwd=ROOT,
    )
    # protoc writes imports between our own files as top-level packages
    # (`from process import process_pb2`); they live under envd.gen.
    for path in out.rglob("*_pb2.py*"):
        text = path.read_text()
        for package in OWN_PACKAGES:
            text = text.replace(f"\nfrom {package} import ", f"\nfrom envd.gen.{package} import ")
            if text.startswith(f"from {package} import "):
                text = f"from envd.gen.{package} import " + text[len(f"from {package} import ") :]
        path.write_text(text)
    # The generated *_connect.py import their *_pb2 relatively, so every
    # output folder must be a package.
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").write_text(PACKAGE_INIT)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "envd" / "gen")
