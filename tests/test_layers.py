"""The design page's module table, the import-linter contract and the files agree.

``scripts/check`` runs import-linter, which enforces the contract in
``setup.cfg``; these tests keep that contract and the table in
``docs/design/worker-protocol.md`` equal, so the page describes the code.
"""

from __future__ import annotations

import ast
import configparser
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "batchloader"
PAGE = ROOT / "docs" / "design" / "worker-protocol.md"
ROW = re.compile(r"^\| L(\d+) \| (`[^|]+`) \|", flags=re.M)


def table_layers() -> list[set[str]]:
    """The page's layers, top first, each the set of its module names."""
    rows = [
        (int(n), set(re.findall(r"`(\w+)`", cell))) for n, cell in ROW.findall(PAGE.read_text())
    ]
    assert [n for n, _ in rows] == sorted((n for n, _ in rows), reverse=True), "rows out of order"
    return [modules for _, modules in rows]


def contract_layers() -> list[set[str]]:
    """The import-linter contract's layers, top first."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["importlinter:contract:layers"]["layers"].split("\n")
    return [{name.strip() for name in line.split("|")} for line in lines if line.strip()]


def modules_on_disk() -> set[str]:
    """Every module and subpackage of batchloader, as the table names them."""
    names = {p.stem for p in PACKAGE.glob("*.py")}
    names |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    return names


def test_the_table_has_the_contracts_layers_in_its_order():
    """Each layer of the contract is a row of the table, in the same order (the package's
    own __init__, which import-linter cannot place, is the one row it lacks)."""
    table = [layer for layer in table_layers() if layer != {"__init__"}]
    assert table == contract_layers()


def test_every_module_is_in_the_table_once():
    """A new module must be given a layer; a removed one must leave the table."""
    listed = [name for layer in table_layers() for name in layer]
    assert sorted(listed) == sorted(modules_on_disk())


def test_only_the_command_line_imports_the_package_itself():
    """``import batchloader`` inside the package would run back up the layers (to __init__)."""
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            bare = isinstance(node, ast.Import) and any(a.name == "batchloader" for a in node.names)
            from_root = isinstance(node, ast.ImportFrom) and node.module == "batchloader"
            if (bare or from_root) and not _names_submodules(node):
                importers.add(path.relative_to(PACKAGE).parts[0].removesuffix(".py"))
    assert importers <= {"__main__", "_bench"}


def _names_submodules(node: ast.Import | ast.ImportFrom) -> bool:
    """``from batchloader import _shm`` imports a module, not the package's names."""
    if isinstance(node, ast.Import):
        return False
    return all((PACKAGE / f"{a.name}.py").exists() for a in node.names)
