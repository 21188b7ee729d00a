"""fleet's layers, read from the source: who may import whom, and no import cycles.

Layers, bottom up: kernel -> registry -> workspace -> pki -> features -> cli. A module may
import its own layer and the ones below, never one above. Imports under ``if TYPE_CHECKING:``
(annotations only) do not count; imports inside functions do (they still run).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from helpers import FLEET_DIR, child_env, modules_under

KERNEL = (
    "fleet.errors",
    "fleet.identifiers",
    "fleet.files",
    "fleet.clock",
    "fleet.statuses",
    "fleet.resources",
    "fleet.faults",
)
REGISTRY = ("fleet.registry",)
FEATURES = (
    "fleet.devices",
    "fleet.certs",
    "fleet.provision",
    "fleet.export",
    "fleet.cloud",
    "fleet.doctor",
    "fleet.audit_anchor",
    "fleet.status",
    "fleet.broker",
    "fleet.firmware",
    "fleet.listing",
    "fleet.onboard",
    "fleet.device_show",
)
CLI = ("fleet.cli", "fleet.__main__")


@dataclass(frozen=True)
class Rule:
    """Modules under ``modules`` (except ``exempt``) import fleet modules only from
    ``may_import`` (when given) and never anything under ``must_not_import`` (fleet's or
    third-party). Every entry is a module prefix: ``fleet.cloud`` covers ``fleet.cloud.aws``."""

    modules: tuple[str, ...]
    may_import: tuple[str, ...] | None = None
    must_not_import: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()


RULES = {
    "the kernel imports no other fleet layer": Rule(KERNEL, may_import=KERNEL),
    "the registry stands on the kernel only": Rule(REGISTRY, may_import=KERNEL + REGISTRY),
    "the workspace stands on the kernel and the registry": Rule(
        ("fleet.workspace",), may_import=KERNEL + REGISTRY
    ),
    "PKI knows no feature and no CLI": Rule(("fleet.pki",), must_not_import=FEATURES + CLI),
    "the library never imports the CLI, typer or rich": Rule(
        ("fleet",), must_not_import=(*CLI, "typer", "rich"), exempt=CLI
    ),
    "cloud jobs are SQL only (no HTTP client)": Rule(
        ("fleet.cloud.jobs",), must_not_import=("httpx",)
    ),
}


# --- the checker -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """``module`` imports ``target`` (a module: fleet's resolved to the file, others as
    written) at line ``line``."""

    module: str
    target: str
    line: int


def under(module: str, prefix: str) -> bool:
    """``module`` is ``prefix`` or inside it (``fleet.cloud.aws`` is under ``fleet.cloud``)."""
    return module == prefix or module.startswith(prefix + ".")


def is_type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that runs, wherever it is, skipping TYPE_CHECKING blocks (their
    ``else:`` branch runs, so it is kept)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif is_type_checking_block(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
        else:
            stack.extend(ast.iter_child_nodes(node))


def resolve(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]
) -> list[str]:
    """The modules one import statement loads, most specific first: ``from fleet import
    devices`` is ``fleet.devices`` (a module), ``from fleet.devices import add_device`` is
    ``fleet.devices``; relative forms are resolved against ``module``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    if len(targets) < len(node.names):  # some names are attributes of ``base`` itself
        targets.append(base)
    return targets


def import_graph(package_dir: Path) -> dict[str, list[Import]]:
    """Module -> the imports it runs, for every module of the package at ``package_dir``."""
    files = modules_under(package_dir)
    known = set(files)
    graph: dict[str, list[Import]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        nodes = sorted(import_nodes(tree), key=lambda node: node.lineno)
        graph[module] = [
            Import(module, target, node.lineno)
            for node in nodes
            for target in resolve(node, module, is_package, known)
        ]
    return graph


def find_cycle(graph: dict[str, list[Import]]) -> list[Import] | None:
    """One import cycle among the package's own modules (as the imports that close it), or
    ``None``."""
    done: set[str] = set()
    path: list[Import] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[Import] | None:
        on_path.add(module)
        for edge in sorted(graph[module], key=lambda e: (e.target, e.line)):
            if edge.target not in graph or edge.target == module or edge.target in done:
                continue
            path.append(edge)
            if edge.target in on_path:
                start = next(i for i, e in enumerate(path) if e.module == edge.target)
                return path[start:]
            found = visit(edge.target)
            if found:
                return found
            path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def violations(graph: dict[str, list[Import]], rules: dict[str, Rule]) -> list[str]:
    """Every import that breaks a rule, as ``module:line imports target (rule)``."""
    found: list[str] = []
    for name, rule in rules.items():
        for module, edges in sorted(graph.items()):
            covered = any(under(module, p) for p in rule.modules)
            if not covered or any(under(module, p) for p in rule.exempt):
                continue
            for edge in edges:
                internal = edge.target in graph
                outside_allowed = rule.may_import is not None and not any(
                    under(edge.target, p) for p in rule.may_import
                )
                forbidden = any(under(edge.target, p) for p in rule.must_not_import)
                if (internal and outside_allowed) or forbidden:
                    found.append(f"{module}:{edge.line} imports {edge.target} ({name})")
    return found


def describe(cycle: list[Import]) -> str:
    hops = " -> ".join(f"{edge.module} (line {edge.line})" for edge in cycle)
    return f"{hops} -> {cycle[0].module}"


# --- fleet itself ------------------------------------------------------------------------------


def test_fleet_has_no_import_cycles() -> None:
    cycle = find_cycle(import_graph(FLEET_DIR))
    assert cycle is None, f"import cycle: {describe(cycle)}"


def test_fleet_keeps_its_layers() -> None:
    assert violations(import_graph(FLEET_DIR), RULES) == []


def test_every_rule_names_real_modules() -> None:
    """The rules name real modules (a renamed one would silently escape its rule)."""
    modules = set(import_graph(FLEET_DIR))
    for prefix in (*KERNEL, *REGISTRY, *FEATURES, *CLI, "fleet.workspace", "fleet.pki"):
        assert any(under(m, prefix) for m in modules), prefix


# --- the checker catches what it should (a synthetic ``fleet`` in tmp_path) ---------------------


def make_package(root: Path, files: dict[str, str]) -> Path:
    """Write ``{"fleet/a.py": source}`` under ``root``; returns the package folder."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "fleet"


CLEAN = {
    "fleet/__init__.py": "",
    "fleet/errors.py": "",
    "fleet/clock.py": "from fleet import errors\n",
    "fleet/registry/__init__.py": "",
    "fleet/registry/db.py": "from ..errors import x\nfrom . import models\n",
    "fleet/registry/models.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from fleet.workspace import Workspace\n"
    ),
    "fleet/workspace.py": "import fleet.registry.db\n",
    "fleet/pki/__init__.py": "",
    "fleet/pki/ca.py": "from fleet.workspace import Workspace\nimport cryptography\n",
    "fleet/cloud/__init__.py": "",
    "fleet/cloud/jobs.py": "from fleet.registry import db\n",
    "fleet/cloud/http.py": "import httpx\nfrom fleet.pki.ca import issue\n",
    "fleet/cli/__init__.py": "import typer\nfrom fleet.cloud import http\n",
}


def test_checker_passes_a_clean_package(tmp_path: Path) -> None:
    graph = import_graph(make_package(tmp_path, CLEAN))
    assert find_cycle(graph) is None
    assert violations(graph, RULES) == []
    assert {e.target for e in graph["fleet.registry.db"]} == {
        "fleet.errors",
        "fleet.registry.models",
    }


# (file, its planted source, the one violation the checker must report)
PLANTED = [
    (
        "fleet/errors.py",
        "from fleet.registry import db\n",
        "fleet.errors:1 imports fleet.registry.db (the kernel imports no other fleet layer)",
    ),
    (
        "fleet/registry/models.py",
        "from ..workspace import Workspace\n",
        "fleet.registry.models:1 imports fleet.workspace (the registry stands on the kernel only)",
    ),
    (
        "fleet/workspace.py",
        "def f():\n    from fleet.pki import ca\n",
        "fleet.workspace:2 imports fleet.pki.ca (the workspace stands on the kernel and the "
        "registry)",
    ),
    (
        "fleet/pki/ca.py",
        "from fleet.cloud.jobs import enqueue\n",
        "fleet.pki.ca:1 imports fleet.cloud.jobs (PKI knows no feature and no CLI)",
    ),
    (
        "fleet/cloud/jobs.py",
        "import httpx\n",
        "fleet.cloud.jobs:1 imports httpx (cloud jobs are SQL only (no HTTP client))",
    ),
    (
        "fleet/cloud/http.py",
        "from rich.table import Table\n",
        "fleet.cloud.http:1 imports rich.table (the library never imports the CLI, typer or rich)",
    ),
    (
        "fleet/cloud/http.py",
        "from fleet.cli import app\n",
        "fleet.cloud.http:1 imports fleet.cli (the library never imports the CLI, typer or rich)",
    ),
    (
        "fleet/registry/db.py",
        "if TYPE_CHECKING:\n    pass\nelse:\n    import fleet.pki.ca\n",
        "fleet.registry.db:4 imports fleet.pki.ca (the registry stands on the kernel only)",
    ),
]


@pytest.mark.parametrize(("module", "source", "expected"), PLANTED)
def test_checker_reports_a_planted_violation(
    tmp_path: Path, module: str, source: str, expected: str
) -> None:
    graph = import_graph(make_package(tmp_path, {**CLEAN, module: source}))
    assert violations(graph, RULES) == [expected]


def test_checker_reports_a_planted_cycle(tmp_path: Path) -> None:
    planted = {
        "fleet/cloud/jobs.py": "from . import outbox\n",
        "fleet/cloud/outbox.py": "import httpx\n\n\ndef f():\n    from fleet.cloud.jobs import x\n",
    }
    cycle = find_cycle(import_graph(make_package(tmp_path, {**CLEAN, **planted})))
    assert cycle is not None
    assert describe(cycle) == (
        "fleet.cloud.jobs (line 1) -> fleet.cloud.outbox (line 5) -> fleet.cloud.jobs"
    )


# --- the public library ------------------------------------------------------------------------


def test_every_public_name_resolves() -> None:
    """To a function or a class, even with every fleet module loaded: a submodule of the same
    name (``fleet.provision``) would shadow it."""
    import fleet

    for module in modules_under(FLEET_DIR):
        importlib.import_module(module)
    assert len(fleet.__all__) == len(set(fleet.__all__))
    for name in fleet.__all__:
        value = getattr(fleet, name)
        assert callable(value) and not isinstance(value, ModuleType), name
        assert name in dir(fleet), name


HEAVY = ("sqlalchemy", "sqlmodel", "cryptography", "httpx", "botocore", "alembic")


@pytest.mark.parametrize(
    "code",
    [
        "import fleet; fleet.__version__",
        "from fleet.cli import main; sys.argv = ['fleet', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass",
    ],
    ids=["import fleet", "fleet --version"],
)
def test_entry_points_stay_light(code: str) -> None:
    """``import fleet`` and ``fleet --version`` load no database, crypto or HTTP library."""
    report = f"\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    output = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}{report}"],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert output.splitlines()[-1] == "", f"loaded: {output.splitlines()[-1]}"
