"""The public surface: a sorted, complete __all__, each name documented."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil
import re
import traceback

import batchloader

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_all_is_sorted():
    """__all__ is kept in sorted order."""
    assert batchloader.__all__ == sorted(batchloader.__all__)


def test_all_names_exist():
    """Every name in __all__ is importable from the package."""
    missing = [name for name in batchloader.__all__ if not hasattr(batchloader, name)]
    assert missing == []


def test_every_public_attribute_is_in_all():
    """Public classes and functions of the package all appear in __all__."""
    public = {
        name
        for name, value in vars(batchloader).items()
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
    }
    assert public - set(batchloader.__all__) == set()


def test_every_public_name_appears_in_the_api_reference():
    """docs/api.md mentions every name in __all__."""
    text = (DOCS / "api.md").read_text()
    undocumented = [name for name in batchloader.__all__ if f"batchloader.{name}" not in text]
    assert undocumented == []


def test_every_public_name_has_a_docstring():
    """Each public class and function says what it is for."""
    bare = [name for name in batchloader.__all__ if not inspect.getdoc(getattr(batchloader, name))]
    assert bare == []


def test_the_api_reference_lists_exactly_all():
    """docs/api.md has one autodoc entry per name in __all__, and none for anything else."""
    text = (DOCS / "api.md").read_text()
    documented = re.findall(r"^\.\. auto\w+:: batchloader\.(\w+)$", text, flags=re.M)
    assert sorted(documented) == batchloader.__all__


def test_public_names_report_the_package_as_their_module():
    """batchloader.X, not the private module that defines it, in reprs, tracebacks and pickles."""
    ours = [
        name
        for name in batchloader.__all__
        if getattr(getattr(batchloader, name), "__module__", "").startswith("batchloader")
    ]
    assert ours, "no names of our own?"
    assert [n for n in ours if getattr(batchloader, n).__module__ != "batchloader"] == []


def test_a_traceback_names_the_public_exception():
    """An error users catch shows as batchloader.ShmFullError."""
    try:
        raise batchloader.ShmFullError("full")
    except batchloader.ShmFullError as e:
        text = "".join(traceback.format_exception_only(e))
    assert text.startswith("batchloader.ShmFullError: full")


def test_public_submodules_export_only_public_names():
    """A submodule without an underscore exports (in its __all__) only names of the package's __all__."""
    modules = [
        m.name for m in pkgutil.iter_modules(batchloader.__path__) if not m.name.startswith("_")
    ]
    assert modules, "no public submodules found"
    leaks = {
        name: sorted(
            set(importlib.import_module(f"batchloader.{name}").__all__) - set(batchloader.__all__)
        )
        for name in modules
    }
    assert {name: extra for name, extra in leaks.items() if extra} == {}
