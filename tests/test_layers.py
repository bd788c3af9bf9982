"""envd's packages import only downwards: no import points back up the layers.

`LAYERS` is the one table of the allowed direction, top first. A module may
import its own unit and the units of any lower layer; nothing on its own layer
(siblings stay independent) and nothing above. A unit is a top-level module or
package of envd, except that each `envd/services/<name>` is a unit of its own.
`envd/gen` (generated code) may be imported from anywhere. Imports inside
functions and under `TYPE_CHECKING` count too: they are still dependencies.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ENVD = Path(__file__).resolve().parent.parent / "envd"

LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("entry point", frozenset({"__main__"})),
    ("command line", frozenset({"cli"})),
    ("server", frozenset({"server"})),
    # Builds the services, the control plane and the middleware chain.
    ("composition", frozenset({"app"})),
    # The ASGI chain around every route: request state, CORS, token gate, Basic auth.
    ("middleware", frozenset({"middleware"})),
    # Built on the services: live upgrade hands them over, port forwarding.
    ("upgrade", frozenset({"upgrade"})),
    # Port forwarding; the upgrade carries its forwards.
    ("forwarding", frozenset({"port"})),
    # The two surfaces: plain HTTP routes (incl. /files) and the Connect services.
    ("surfaces", frozenset({"api", "services.process", "services.filesystem"})),
    # Connect plumbing: codecs, headers, errors, the per-request state.
    ("rpc", frozenset({"rpc"})),
    # What envd does to the guest: clock, hosts, CA store, NFS, MMDS, metrics.
    ("guest", frozenset({"host"})),
    # The file-system layer both file surfaces share.
    ("files", frozenset({"fs"})),
    # Users, groups, path expansion.
    ("permissions", frozenset({"permissions"})),
    ("logging", frozenset({"logs"})),
    (
        "foundation",
        frozenset({"asgi", "boot", "config", "execcontext", "httpclient", "headlimit"}),
    ),
    # envd/__init__.py: the version constants.
    ("package", frozenset({"envd"})),
)

# Back-edges that exist today, each with what removes it. An entry that is no
# longer needed fails the test too, so the table never hides a new one.
TOLERATED: dict[tuple[str, str], str] = {}

RANK = {unit: rank for rank, (_name, units) in enumerate(LAYERS) for unit in units}
LAYER_NAME = {unit: name for name, units in LAYERS for unit in units}


@dataclass(frozen=True, slots=True)
class Import:
    path: Path
    line: int
    importer: str
    target: str


def module_name(path: Path) -> str:
    parts = path.relative_to(ENVD.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "envd"
    if parts[0] == "services" and len(parts) > 1:
        return f"services.{parts[1]}"
    return parts[0]


def sources() -> Iterator[Path]:
    for path in sorted(ENVD.rglob("*.py")):
        if "gen" not in path.relative_to(ENVD).parts[:1]:
            yield path


def is_module(name: str) -> bool:
    base = ENVD.parent / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports(path: Path, text: str | None = None, module: str | None = None) -> Iterator[Import]:
    """Every envd module `path` imports, with `from envd import x` resolved to `envd.x`."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if is_module(sub) else base)
        else:
            continue
        for target in targets:
            if (target == "envd" or target.startswith("envd.")) and not target.startswith(
                "envd.gen"
            ):
                yield Import(path, node.lineno, module, target)


def cross_unit_imports() -> list[Import]:
    return [i for p in sources() for i in imports(p) if unit(i.importer) != unit(i.target)]


def describe(i: Import) -> str:
    a, b = unit(i.importer), unit(i.target)
    where = f"{i.path.relative_to(ENVD.parent)}:{i.line}"
    return f"{where} imports {i.target}: {a} ({LAYER_NAME[a]}) may not import {b} ({LAYER_NAME[b]})"


def test_every_unit_has_a_layer() -> None:
    units = {unit(i.importer) for i in cross_unit_imports()}
    units |= {unit(i.target) for i in cross_unit_imports()}
    missing = sorted(units - RANK.keys())
    assert not missing, f"place these in LAYERS (tests/test_layers.py): {missing}"


def test_layers_table_names_each_unit_once() -> None:
    listed = [u for _name, units in LAYERS for u in units]
    assert len(listed) == len(set(listed))


def test_no_import_points_up_or_sideways() -> None:
    found = [
        i
        for i in cross_unit_imports()
        if unit(i.importer) in RANK
        and unit(i.target) in RANK
        and RANK[unit(i.target)] <= RANK[unit(i.importer)]
    ]
    bad = [describe(i) for i in found if (unit(i.importer), unit(i.target)) not in TOLERATED]
    assert not bad, "imports against LAYERS (tests/test_layers.py):\n" + "\n".join(bad)
    used = {(unit(i.importer), unit(i.target)) for i in found}
    stale = sorted(set(TOLERATED) - used)
    assert not stale, f"no longer needed, delete from TOLERATED: {stale}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from envd.api.init_request import VolumeMount", "envd.api.init_request"),
        ("from envd import httpclient", "envd.httpclient"),
        ("from envd import ENVD_VERSION", "envd"),
        ("import envd.logs", "envd.logs"),
        ("from . import clock", "envd.host.clock"),
        ("def f():\n    from envd.server import serve", "envd.server"),
        ("from envd.gen.process import process_pb2", None),
    ],
)
def test_imports_are_found(source: str, expected: str | None) -> None:
    # The scanner itself, on a module that would be envd/host/probe.py.
    probe = ENVD / "host" / "probe.py"
    found = [i.target for i in imports(probe, source, "envd.host.probe")]
    assert found == ([] if expected is None else [expected])
