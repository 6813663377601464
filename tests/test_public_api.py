"""The public surface: a sorted, complete __all__, each name documented."""

from __future__ import annotations

import inspect
import pathlib

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
